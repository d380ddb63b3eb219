"""The tokenized corpus: every document as WordPiece ids, tokenized once and memory-mapped.

Example generation needs random access to any document (a random-next segment comes from anywhere in the corpus)
and several passes (dupe_factor, and phases at different max_seq_length such as 128 then 512). Tokenizing once into
`tokens-{split}.arrow` (Arrow IPC file, `sentences: list<list<uint16|uint32>>`, one row per document) serves all of
them: a second phase reuses the store, and documents are read as slices of the memory-mapped file rather than
held in Python lists. The tokenizer is trained (or loaded) here and saved next to the store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bert_core import stage
from bert_core.shards import id_type
from bert_core.tokenizer import TokenizerConfig, load_tokenizer, tokenizer_hash, train_tokenizer

logger = logging.getLogger(__name__)

_BATCH_DOCUMENTS = 512


def iter_ingested(documents_dir: str | Path, split: str, batch_size: int = _BATCH_DOCUMENTS) -> Iterator[list[list[str]]]:
    """Batches of documents (each a list of sentences) of one split of an ingest output, in shard order."""
    shards = sorted(Path(documents_dir).glob(f"documents-{split}-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no documents-{split}-*.parquet in {documents_dir}: run the ingest stage first")
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_size, columns=["sentences"]):
            yield batch.column("sentences").to_pylist()


def tokens_key(config: TokenizerConfig, documents_dir: str | Path) -> str:
    inputs = stage.hash_files(sorted(Path(documents_dir).glob("documents-*.parquet")))
    if config.tokenizer_path:
        inputs = stage.hash_json([inputs, stage.hash_path(config.tokenizer_path)])
    return stage.hash_json({"tokenizer": config, "inputs": inputs, "version": 1})


def tokenize_corpus(config: TokenizerConfig, documents_dir: str | Path, output_dir: str | Path) -> Path:
    """Train or load the tokenizer and write the token store of every split; skip if up to date."""
    output_dir = Path(output_dir)
    key = tokens_key(config, documents_dir)
    if stage.completed_stage(output_dir, key):
        logger.info("tokens: %s is up to date, skipping", output_dir)
        return output_dir
    if config.tokenizer_path:
        tokenizer = load_tokenizer(config.tokenizer_path, lowercase=config.lowercase)
    else:
        sentences = (s for batch in iter_ingested(documents_dir, "train") for doc in batch for s in doc)
        tokenizer = train_tokenizer(sentences, config)
    value_type = id_type(len(tokenizer))
    schema = pa.schema([("sentences", pa.list_(pa.list_(value_type)))])
    backend = tokenizer.backend_tokenizer
    counts = {}
    with stage.atomic_directory(output_dir) as tmp:
        tokenizer.save_pretrained(tmp / "tokenizer")
        for split in ("train", "validation"):
            documents = sentences = tokens = 0
            with pa.OSFile(str(tmp / f"tokens-{split}.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for batch in iter_ingested(documents_dir, split):
                    flat = [s for doc in batch for s in doc]
                    encodings = backend.encode_batch_fast(flat, add_special_tokens=False)
                    doc_offsets, sent_offsets, values = [0], [0], []
                    k = 0
                    for doc in batch:
                        kept = 0
                        for encoding in encodings[k : k + len(doc)]:
                            if encoding.ids:  # an empty sentence (all characters dropped) carries nothing
                                values.append(np.asarray(encoding.ids, dtype=value_type.to_pandas_dtype()))
                                sent_offsets.append(sent_offsets[-1] + len(encoding.ids))
                                kept += 1
                        k += len(doc)
                        if kept:
                            doc_offsets.append(doc_offsets[-1] + kept)
                    if len(doc_offsets) == 1:
                        continue
                    inner = pa.ListArray.from_arrays(pa.array(sent_offsets, pa.int32()),
                                                     pa.array(np.concatenate(values), value_type))
                    outer = pa.ListArray.from_arrays(pa.array(doc_offsets, pa.int32()), inner)
                    writer.write_batch(pa.record_batch([outer], schema=schema))
                    documents += len(doc_offsets) - 1
                    sentences += len(sent_offsets) - 1
                    tokens += sent_offsets[-1]
            counts[split] = {"documents": documents, "sentences": sentences, "tokens": tokens}
        manifest = {"tokenizer_hash": tokenizer_hash(tokenizer), "vocab_size": len(tokenizer), "splits": counts,
                    "config": config}
        stage.write_json(tmp / "manifest.json", manifest)
        stage.write_stage_record(tmp, key=key, stage="tokens", config=config, outputs=counts)
    logger.info("tokens: %s -> %s", counts, output_dir)
    return output_dir


class TokenStore:
    """Random access to the tokenized documents of one split: `store[i]` is a `DocumentView` of its sentences."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        table = pa.ipc.open_file(pa.memory_map(str(self.path), "r")).read_all()
        self._chunks = []
        starts = [0]
        for chunk in table.column("sentences").chunks:
            inner = chunk.values
            # Zero-copy NumPy views of the memory-mapped buffers.
            self._chunks.append((chunk.offsets.to_numpy(), inner.offsets.to_numpy(), inner.values.to_numpy()))
            starts.append(starts[-1] + len(chunk))
        self._starts = np.asarray(starts)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> DocumentView:
        if index < 0:
            index += len(self)
        chunk = int(np.searchsorted(self._starts, index, side="right") - 1)
        doc_offsets, sent_offsets, values = self._chunks[chunk]
        row = index - int(self._starts[chunk])
        return DocumentView(values, sent_offsets, int(doc_offsets[row]), int(doc_offsets[row + 1]))


class DocumentView:
    """One document of a TokenStore: `len(doc)` sentences, `doc[j]` the ids of sentence j (a list, built on demand).

    Lazy on purpose: a random-next segment needs a few sentences of a document that may hold thousands (a book).
    """

    __slots__ = ("_values", "_offsets", "_start", "_stop")

    def __init__(self, values: np.ndarray, offsets: np.ndarray, start: int, stop: int):
        self._values, self._offsets, self._start, self._stop = values, offsets, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, j: int) -> list[int]:
        if j < 0:
            j += len(self)
        if not 0 <= j < len(self):
            raise IndexError(j)
        k = self._start + j
        return self._values[self._offsets[k] : self._offsets[k + 1]].tolist()

    def __iter__(self):
        return (self[j] for j in range(len(self)))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)
