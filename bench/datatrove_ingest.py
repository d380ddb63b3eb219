"""datatrove doing the work of bertflow's ingest stage, for `bench/ingest.py` (issue 17): run as a child process,
`python bench/datatrove_ingest.py FILES.json WORKDIR`, it prints one JSON line (seconds, documents passing
the filters, near duplicates removed, kept document ids).

The pipeline is the one datatrove's own FineWeb example lays out, on one task (one core, as bertflow's ingest is
timed): read the WikiExtractor files (a reader step written here: datatrove has none for `<doc>` files), bertflow's
length and alphabetic-share rules (`LambdaFilter`), Gopher's repetition and quality filters, and a JSONL writer;
then MinHash near-dedup in datatrove's four stages (signatures, buckets, clusters, filter) with bertflow's settings:
word 5-gram shingles, 9 bands of 13 hashes (datasketch's optimum for threshold 0.8 over 128 permutations, the bands
bertflow's LSH uses), seed 1; and the kept documents written as JSONL. What datatrove does not do here and bertflow
does: exact dedup, decontamination against SST-2 / MRPC dev, sentence splitting, a validation split, Parquet. So
the ratio is conservative for bertflow.

datatrove's English word tokenizer is NLTK's, whose punkt data cannot be downloaded on this machine, and its
fallback (`WhitespaceTokenizer`) needs spaCy's "xx" model: both out of reach offline. datatrove takes any
`WordTokenizer` instance in place of a language, so the filters and MinHash here use one made of two regexes
(words: whitespace tokens, as bertflow's quality rules count them; sentences: up to terminal punctuation). The
filters take bertflow's thresholds where the two differ: no word-count bounds (bertflow has its 200 characters),
no English stop-word rule.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import sys
import time
from pathlib import Path

from datatrove.data import Document
from datatrove.utils.word_tokenizers import WordTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bert_core.ingest.cleaning import CleaningConfig, _alpha_fraction  # noqa: E402  bertflow's own rule, one home

_DOC = re.compile(r'<doc id="([^"]*)"[^>]*>\n(.*?)</doc>', re.S)
_WORD = re.compile(r"\S+")  # whitespace tokens, as bertflow's quality rules count words
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"')\]]*|\n|$)")
CLEANING = CleaningConfig()  # bertflow's defaults: the length and letter-share rules the LambdaFilter applies


class RegexTokenizer(WordTokenizer):
    """A word and sentence tokenizer that needs no downloaded data."""

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _SENTENCE.finditer(text) if m.group().strip()]


def wikiextractor_reader(files: list[str]):
    """A datatrove pipeline step: the `<doc>` documents of the files given to this rank, title line dropped."""

    def read(data, rank: int = 0, world_size: int = 1):
        for path in files[rank::world_size]:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                for doc_id, body in _DOC.findall(handle.read()):
                    text = body.split("\n", 1)[1] if "\n" in body else ""
                    yield Document(text=text.strip(), id=f"wiki:{doc_id}", metadata={"source": path})
    return read


def keeps_text(doc: Document) -> bool:
    return len(doc.text) >= CLEANING.min_chars and _alpha_fraction(doc.text) >= CLEANING.min_alpha_fraction


def run(files: list[str], work: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter, LambdaFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    tokenizer = RegexTokenizer("en")
    config = MinhashConfig(n_grams=5, num_buckets=9, hashes_per_bucket=13, seed=1)
    filtered, out = str(work / "filtered"), str(work / "output")

    stages = itertools.count()

    def execute(pipeline: list, tasks: int = 1) -> None:
        """One stage; tasks run one after another in this process (workers=1): one core, as bertflow is timed."""
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, skip_completed=False,
                              logging_dir=str(work / "logs" / str(next(stages)))).run()

    start = time.perf_counter()
    execute([wikiextractor_reader(files), LambdaFilter(keeps_text),
             GopherRepetitionFilter(language=tokenizer),
             GopherQualityFilter(language=tokenizer, min_doc_words=None, max_doc_words=None, min_stop_words=None),
             JsonlWriter(filtered)])
    filtered_at = time.perf_counter()
    execute([JsonlReader(filtered), MinhashDedupSignature(str(work / "signatures"), config=config,
                                                          language=tokenizer)])
    # the bucket stage wants one task per band (or a multiple): 9 tasks, each merging its band's signatures
    execute([MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=config)],
            tasks=config.num_buckets)
    execute([MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=config)])
    execute([JsonlReader(filtered), MinhashDedupFilter(str(work / "remove_ids")), JsonlWriter(out)])
    seconds = time.perf_counter() - start

    def ids(folder: str) -> list[str]:
        found = []
        for path in sorted(Path(folder).glob("*.jsonl.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                found += [json.loads(line)["id"] for line in handle]
        return found

    passed, kept = ids(filtered), ids(out)
    return {"seconds": seconds, "filter_seconds": filtered_at - start, "dedup_seconds": seconds - (filtered_at - start),
            "documents_passed_filters": len(passed), "near_duplicates_removed": len(passed) - len(kept),
            "kept_ids": kept}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]), Path(sys.argv[2]))))
