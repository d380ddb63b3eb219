"""Ingest: corpus sources in, document shards out.

In: files, directories, globs or `hf:` datasets (Wikipedia dumps, WikiExtractor output, books, JSON lines, Parquet,
plain text; compressed or not). Out: `documents/` with sentence-split document shards per split, a manifest and
the count of every rejected document by reason.

- `sources`: sources -> `Document`s (with `wikitext` for MediaWiki markup and `textfiles` for decoding files and
  reading table files and SQuAD JSON).
- `cleaning`: normalise, repair and split a document into sentences.
- `filters`: Gopher/C4-style document quality filters, each rejection with its reason.
- `dedup`, `near_dedup`: exact and MinHash near-duplicate removal (in memory, or on disk at corpus scale).
- `decontamination`: drop documents that share n-grams with downstream evaluation sets.
- `corpus`: the stage itself (`ingest_corpus`: plan, process inputs in parallel, merge, split).
"""
