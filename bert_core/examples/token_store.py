"""The tokenized corpus: every document as WordPiece ids, tokenized once and memory-mapped.

Example generation needs random access to any document (a random-next segment comes from anywhere in the corpus)
and several passes (dupe_factor, and phases at different max_seq_length such as 128 then 512). Tokenizing once into
`tokens-{split}.arrow` (Arrow IPC file, `sentences: list<list<uint16|uint32>>`, one row per document) serves all of
them: a second phase reuses the store, and documents are read as slices of the memory-mapped file rather than
held in Python lists. The tokenizer is trained (or loaded) here and saved next to the store.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bert_core import stage
from bert_core.examples.shards import MappedTable, arrow_array, id_type, list_array, numpy_dtype, numpy_view
from bert_core.examples.tokenizer import TokenizerConfig, load_backend, save_tokenizer, tokenizer_hash, train_backend

logger = logging.getLogger(__name__)

_BATCH_DOCUMENTS = 16
_ENCODE_CHARACTERS = 1 << 18  # text per encode_batch call: enough for all threads, little memory for Encodings
_CHUNK_TOKENS = 1 << 20  # tokens per record batch of the store (one contiguous buffer each)
_UNIT_BYTES = 1 << 19  # text per unit of tokenizing work: ~0.3 s on one core, so that workers finish together


def _encode_slices(tokenizer, sentences: list[str]) -> list:
    """Encodings of `sentences`, in calls of about _ENCODE_CHARACTERS characters (runs without the GIL)."""
    out, start = [], 0
    while start < len(sentences):
        stop, size = start, 0
        while stop < len(sentences) and (size < _ENCODE_CHARACTERS or stop == start):
            size += len(sentences[stop])
            stop += 1
        out.append(tokenizer.encode_batch_fast(sentences[start:stop], add_special_tokens=False))
        start = stop
    return out


def _to_arrays(slices: list, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Token counts per sentence and the flat ids of encoded slices."""
    ids = [e.ids for encodings in slices for e in encodings]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return lengths, np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))


def encoded_batches(tokenizer, batches: Iterable[list[list[str]]],
                    dtype: np.dtype) -> Iterator[tuple[list[list[str]], np.ndarray, np.ndarray]]:
    """(documents, token count per sentence, flat ids) per batch of documents, in order.

    A helper thread encodes batch k+1 (the tokenizer releases the GIL and uses every core it is allowed) while this
    thread reads the next batch and turns batch k's encodings into arrays, so the cores do not wait on Python. A
    single-threaded worker (`RAYON_NUM_THREADS=1`, one per core) encodes inline: it keeps to its one core.
    """
    if os.environ.get("RAYON_NUM_THREADS") == "1":
        for batch in batches:
            yield batch, *_to_arrays(_encode_slices(tokenizer, [s for doc in batch for s in doc]), dtype)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for batch in batches:
            future = pool.submit(_encode_slices, tokenizer, [s for doc in batch for s in doc])
            if pending is not None:
                yield pending[0], *_to_arrays(pending[1].result(), dtype)
            pending = (batch, future)
        if pending is not None:
            yield pending[0], *_to_arrays(pending[1].result(), dtype)


def iter_ingested(documents_dir: str | Path, split: str, batch_size: int = _BATCH_DOCUMENTS) -> Iterator[list[list[str]]]:
    """Batches of documents (each a list of sentences) of one split of an ingest output, in shard order."""
    shards = sorted(Path(documents_dir).glob(f"documents-{split}-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no documents-{split}-*.parquet in {documents_dir}: run the ingest stage first")
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_size, columns=["sentences"]):
            yield batch.column("sentences").to_pylist()


def _write_chunk(writer, chunk: list[tuple[np.ndarray, np.ndarray, np.ndarray]], value_type: pa.DataType) -> None:
    """One record batch (one contiguous token buffer) from (sentences per document, tokens per sentence, ids)."""
    doc_counts = np.concatenate([c[0] for c in chunk])
    lengths = np.concatenate([c[1] for c in chunk])
    if not doc_counts.size:
        return
    sent_offsets = np.zeros(lengths.size + 1, dtype=np.int32)
    np.cumsum(lengths, out=sent_offsets[1:])
    doc_offsets = np.zeros(doc_counts.size + 1, dtype=np.int32)
    np.cumsum(doc_counts, out=doc_offsets[1:])
    inner = list_array(sent_offsets, np.concatenate([c[2] for c in chunk]), value_type)
    outer = pa.ListArray.from_arrays(arrow_array(doc_offsets, pa.int32()), inner)
    writer.write_batch(pa.record_batch([outer], names=["sentences"]))


class _Sentences:
    """Every sentence of one split of an ingest output, read again from disk at each iteration (the tokenizer
    trainer reads its texts twice, and a corpus need not fit in memory)."""

    def __init__(self, documents_dir: str | Path, split: str):
        self.documents_dir, self.split = documents_dir, split

    def __iter__(self) -> Iterator[str]:
        return (s for batch in iter_ingested(self.documents_dir, self.split) for doc in batch for s in doc)


def tokens_key(config: TokenizerConfig, documents_dir: str | Path) -> str:
    inputs = stage.hash_files(sorted(Path(documents_dir).glob("documents-*.parquet")))
    if config.tokenizer_path:
        inputs = stage.hash_json([inputs, stage.hash_path(config.tokenizer_path)])
    # version 2: the store is the concatenation of per-unit parts (record batches end at unit boundaries)
    return stage.hash_json({"tokenizer": config, "inputs": inputs, "version": 2})


def plan_token_units(documents_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """Row ranges of about `_UNIT_BYTES` of text, in corpus order, never across ingest files: the units of work.

    A function of the ingest output only (its Parquet metadata), so the store is the same for any number of workers.
    """
    shards = sorted(Path(documents_dir).glob(f"documents-{split}-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no documents-{split}-*.parquet in {documents_dir}: run the ingest stage first")
    units: list[dict[str, Any]] = []
    for shard in shards:
        metadata = pq.ParquetFile(shard).metadata
        rows = metadata.num_rows
        if not rows:
            continue
        text_bytes = sum(metadata.row_group(g).total_byte_size for g in range(metadata.num_row_groups))
        per_unit = max(1, math.ceil(rows * _UNIT_BYTES / max(1, text_bytes)))
        for start in range(0, rows, per_unit):
            stop = min(rows, start + per_unit)
            units.append({"split": split, "index": len(units), "file": str(shard), "start": start, "stop": stop,
                          "bytes": text_bytes * (stop - start) // rows})
    return units


def _unit_documents(spec: dict[str, Any]) -> Iterator[list[list[str]]]:
    """Batches of the documents (lists of sentences) in rows [start, stop) of one ingest file."""
    parquet = pq.ParquetFile(spec["file"])
    first = 0
    for group in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        lo, hi = max(spec["start"], first), min(spec["stop"], first + rows)
        if lo < hi:
            column = parquet.read_row_group(group, columns=["sentences"]).column("sentences").slice(lo - first, hi - lo)
            for offset in range(0, hi - lo, _BATCH_DOCUMENTS):
                yield column.slice(offset, _BATCH_DOCUMENTS).to_pylist()
        first += rows


@functools.lru_cache(maxsize=4)
def _unit_tokenizer(path: str):
    """A worker loads the run's tokenizer once, not once per unit (a parts directory's tokenizer never changes)."""
    return load_backend(path)


def tokenize_unit(spec: dict[str, Any]) -> dict[str, int]:
    """Tokenize one unit into its part file (skipped when already there); return its counts.

    `spec` is plain data (see `plan_tokens`), so any process or machine that sees the ingest output and the parts
    directory can run it: a process pool, a Prefect task, a Dask worker. The tokenizer uses the threads it is
    allowed (`RAYON_NUM_THREADS`; a single-threaded worker sets 1).
    """
    parts = Path(spec["parts_dir"])
    name = f"tokens-{spec['split']}-{spec['index']:06d}"
    done = parts / f"{name}.json"
    if done.is_file():
        return stage.read_json(done)
    tokenizer = _unit_tokenizer(str(parts / "tokenizer"))
    value_type = id_type(tokenizer.get_vocab_size())
    counts = {"documents": 0, "sentences": 0, "tokens": 0}
    schema = pa.schema([("sentences", pa.list_(pa.list_(value_type)))])
    with stage.atomic_file(parts / f"{name}.arrow") as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            chunk: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            chunk_tokens = 0
            for batch, lengths, values in encoded_batches(tokenizer, _unit_documents(spec), numpy_dtype(value_type)):
                # An empty sentence (all characters dropped) carries nothing; a document of only those is dropped.
                document_of = np.repeat(np.arange(len(batch)), [len(d) for d in batch])
                per_doc = np.bincount(document_of[lengths > 0], minlength=len(batch))
                chunk.append((per_doc[per_doc > 0], lengths[lengths > 0], values))
                chunk_tokens += values.size
                counts["documents"] += int((per_doc > 0).sum())
                counts["sentences"] += int((lengths > 0).sum())
                counts["tokens"] += values.size
                if chunk_tokens >= _CHUNK_TOKENS:
                    _write_chunk(writer, chunk, value_type)
                    chunk, chunk_tokens = [], 0
            if chunk:
                _write_chunk(writer, chunk, value_type)
    stage.write_json(done, counts)
    return counts


def plan_tokens(config: TokenizerConfig, documents_dir: str | Path, output_dir: str | Path) -> dict[str, Any]:
    """Train (one process, every core: the vocabulary does not depend on the worker count) or load the tokenizer,
    and cut each split into units; returns the plan `tokenize_unit` and `finish_tokens` take (plain data).
    An up-to-date store gives `up_to_date: True` and no units."""
    output_dir = Path(output_dir)
    stage.remove_stale_temporaries(output_dir)  # a killed run's half-written store, whether or not this run writes
    key = tokens_key(config, documents_dir)
    plan: dict[str, Any] = {"key": key, "output_dir": str(output_dir), "config": stage.to_jsonable(config),
                            "units": [], "up_to_date": bool(stage.completed_stage(output_dir, key))}
    if plan["up_to_date"]:
        return plan
    parts = output_dir.with_name(output_dir.name + "-parts") / key[:16]
    if not (parts / "tokenizer" / "tokenizer.json").is_file():  # a resumed run keeps the tokenizer its parts used
        if config.tokenizer_path:
            tokenizer = load_backend(config.tokenizer_path, lowercase=config.lowercase)
        else:
            tokenizer = train_backend(_Sentences(documents_dir, "train"), config)
        with stage.atomic_directory(parts / "tokenizer") as tmp:
            save_tokenizer(tokenizer, tmp)
    plan["parts_dir"] = str(parts)
    for split in ("train", "validation"):
        plan["units"] += [{**unit, "parts_dir": str(parts)} for unit in plan_token_units(documents_dir, split)]
    return plan


def finish_tokens(plan: dict[str, Any], stats: list[dict[str, int]]) -> Path:
    """Concatenate each split's parts, in unit order, into `tokens-{split}.arrow`; write the manifest and stage
    record; remove the parts. The store is the same bytes for any number of workers."""
    output_dir = Path(plan["output_dir"])
    if plan["up_to_date"]:
        logger.info("tokens: %s is up to date, skipping", output_dir)
        return output_dir
    config = stage.config_from_dict(TokenizerConfig, plan["config"])
    parts = Path(plan["parts_dir"])
    tokenizer = load_backend(parts / "tokenizer")
    schema = pa.schema([("sentences", pa.list_(pa.list_(id_type(tokenizer.get_vocab_size()))))])
    counts = {}
    with stage.atomic_directory(output_dir) as tmp:
        save_tokenizer(tokenizer, tmp / "tokenizer")
        for split in ("train", "validation"):
            units = [(u, s) for u, s in zip(plan["units"], stats) if u["split"] == split]
            with pa.OSFile(str(tmp / f"tokens-{split}.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for unit, _ in units:
                    part = MappedTable(parts / f"tokens-{split}-{unit['index']:06d}.arrow")
                    for batch in part.table.to_batches():
                        writer.write_batch(batch)
                    part.release()
            counts[split] = {k: sum(s[k] for _, s in units) for k in ("documents", "sentences", "tokens")}
        manifest = {"tokenizer_hash": tokenizer_hash(tokenizer), "vocab_size": tokenizer.get_vocab_size(),
                    "splits": counts, "config": config, "units": len(plan["units"])}
        stage.write_json(tmp / "manifest.json", manifest)
        stage.write_stage_record(tmp, key=plan["key"], stage="tokens", config=config, outputs=counts)
    shutil.rmtree(parts, ignore_errors=True)
    with contextlib.suppress(OSError):
        parts.parent.rmdir()  # only when no other run's parts are there
    logger.info("tokens: %s -> %s", counts, output_dir)
    return output_dir


def tokenize_corpus(config: TokenizerConfig, documents_dir: str | Path, output_dir: str | Path,
                    executor: Executor | None = None) -> Path:
    """Train or load the tokenizer and write the token store of every split; skip if up to date. Units run in
    this process, or on `executor` (a process pool, a Dask client's `get_executor()`)."""
    started = time.perf_counter()
    plan = plan_tokens(config, documents_dir, output_dir)
    planned = time.perf_counter()
    stats = stage.map_units(tokenize_unit, plan["units"], executor, cost=lambda unit: unit["bytes"])
    tokenized = time.perf_counter()
    path = finish_tokens(plan, stats)
    if not plan["up_to_date"]:
        logger.info("tokens: plan %.1f s, %d units on %s %.1f s, concatenate %.1f s", planned - started,
                    len(plan["units"]), type(executor).__name__ if executor else "this process", tokenized - planned,
                    time.perf_counter() - tokenized)
    return path


class TokenStore:
    """Random access to the tokenized documents of one split: `store[i]` is a `DocumentView` of its sentences.

    The file is memory-mapped; `sentence_bounds(i)` gives a document's sentence boundaries as positions in the
    token buffer `values(chunk)` of its record batch, which is what example generation works on (spans of token
    positions, gathered once per unit of work). `release()` drops the pages this process has touched from its
    resident memory (they stay in the page cache), so a pass over a corpus larger than RAM keeps a flat footprint.
    """

    def __init__(self, path: str | Path | None = None, *, _arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None):
        self.path = Path(path) if path is not None else None
        self._mapped = None
        if _arrays is None:
            self._mapped = MappedTable(self.path)
            table = self._mapped.table
            _arrays = []
            for chunk in table.column("sentences").chunks:
                inner = chunk.values
                # Zero-copy NumPy views of the memory-mapped buffers (offsets made absolute within the chunk).
                doc_offsets = numpy_view(chunk.offsets)
                sent_offsets = numpy_view(inner.offsets)
                _arrays.append((doc_offsets, sent_offsets, numpy_view(inner.values)))
        self._chunks = _arrays
        self._starts = np.cumsum([0] + [len(d) - 1 for d, _, _ in self._chunks])

    @classmethod
    def from_documents(cls, documents: list[list[list[int]]], dtype=np.uint32) -> TokenStore:
        """An in-memory store of token-id documents (one chunk): for tests and small tools."""
        sentences = [s for d in documents for s in d]
        doc_offsets = np.cumsum([0] + [len(d) for d in documents]).astype(np.int32)
        sent_offsets = np.cumsum([0] + [len(s) for s in sentences]).astype(np.int32)
        values = np.asarray([t for s in sentences for t in s], dtype=dtype)
        return cls(_arrays=[(doc_offsets, sent_offsets, values)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(chunk, row within the chunk) of document `index`."""
        if index < 0:
            index += len(self)
        chunk = int(np.searchsorted(self._starts, index, side="right") - 1)
        return chunk, index - int(self._starts[chunk])

    def sentence_bounds(self, index: int) -> tuple[int, list[int]]:
        """(chunk, [b0, b1, ..., bn]): sentence j of document `index` is `values(chunk)[b_j:b_j+1]`."""
        chunk, row = self.locate(index)
        doc_offsets, sent_offsets, _ = self._chunks[chunk]
        return chunk, sent_offsets[doc_offsets[row] : doc_offsets[row + 1] + 1].tolist()

    def values(self, chunk: int) -> np.ndarray:
        return self._chunks[chunk][2]

    @property
    def num_chunks(self) -> int:
        return len(self._chunks)

    def document_tokens(self) -> np.ndarray:
        """Token count of every document, in order."""
        counts = [s[d[1:]].astype(np.int64) - s[d[:-1]] for d, s, _ in self._chunks]
        return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)

    def release(self) -> None:
        if self._mapped is not None:
            self._mapped.release()

    def __getitem__(self, index: int) -> DocumentView:
        chunk, row = self.locate(index)
        doc_offsets, sent_offsets, values = self._chunks[chunk]
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
