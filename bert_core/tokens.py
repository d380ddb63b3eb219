"""The tokenized corpus: every document as WordPiece ids, tokenized once and memory-mapped.

Example generation needs random access to any document (a random-next segment comes from anywhere in the corpus)
and several passes (dupe_factor, and phases at different max_seq_length such as 128 then 512). Tokenizing once into
`tokens-{split}.arrow` (Arrow IPC file, `sentences: list<list<uint16|uint32>>`, one row per document) serves all of
them: a second phase reuses the store, and documents are read as slices of the memory-mapped file rather than
held in Python lists. The tokenizer is trained (or loaded) here and saved next to the store.
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bert_core import stage
from bert_core.shards import MappedTable, arrow_array, id_type, list_array, numpy_dtype
from bert_core.tokenizer import TokenizerConfig, load_backend, save_tokenizer, tokenizer_hash, train_backend

logger = logging.getLogger(__name__)

_BATCH_DOCUMENTS = 16
_ENCODE_CHARACTERS = 1 << 18  # text per encode_batch call: enough for all threads, little memory for Encodings
_CHUNK_TOKENS = 1 << 20  # tokens per record batch of the store (one contiguous buffer each)


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


def encoded_batches(tokenizer, documents_dir: str | Path, split: str,
                    dtype: np.dtype) -> Iterator[tuple[list[list[str]], np.ndarray, np.ndarray]]:
    """(documents, token count per sentence, flat ids) per batch of documents, in corpus order.

    A helper thread encodes batch k+1 (the tokenizer releases the GIL and uses every core) while this thread
    reads the next batch and turns batch k's encodings into arrays, so the cores do not wait on Python.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for batch in iter_ingested(documents_dir, split):
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
    return stage.hash_json({"tokenizer": config, "inputs": inputs, "version": 1})


def tokenize_corpus(config: TokenizerConfig, documents_dir: str | Path, output_dir: str | Path) -> Path:
    """Train or load the tokenizer and write the token store of every split; skip if up to date."""
    output_dir = Path(output_dir)
    stage.remove_stale_temporaries(output_dir)  # a killed run's half-written store, whether or not this run writes
    key = tokens_key(config, documents_dir)
    if stage.completed_stage(output_dir, key):
        logger.info("tokens: %s is up to date, skipping", output_dir)
        return output_dir
    if config.tokenizer_path:
        tokenizer = load_backend(config.tokenizer_path, lowercase=config.lowercase)
    else:
        tokenizer = train_backend(_Sentences(documents_dir, "train"), config)
    value_type = id_type(tokenizer.get_vocab_size())
    dtype = numpy_dtype(value_type)
    schema = pa.schema([("sentences", pa.list_(pa.list_(value_type)))])
    counts = {}
    with stage.atomic_directory(output_dir) as tmp:
        save_tokenizer(tokenizer, tmp / "tokenizer")
        for split in ("train", "validation"):
            documents = sentences = tokens = 0
            with pa.OSFile(str(tmp / f"tokens-{split}.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                chunk: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
                chunk_tokens = 0
                for batch, lengths, values in encoded_batches(tokenizer, documents_dir, split, dtype):
                    # An empty sentence (all characters dropped) carries nothing; a document of only those is dropped.
                    document_of = np.repeat(np.arange(len(batch)), [len(d) for d in batch])
                    per_doc = np.bincount(document_of[lengths > 0], minlength=len(batch))
                    chunk.append((per_doc[per_doc > 0], lengths[lengths > 0], values))
                    chunk_tokens += values.size
                    documents += int((per_doc > 0).sum())
                    sentences += int((lengths > 0).sum())
                    tokens += values.size
                    if chunk_tokens >= _CHUNK_TOKENS:
                        _write_chunk(writer, chunk, value_type)
                        chunk, chunk_tokens = [], 0
                if chunk:
                    _write_chunk(writer, chunk, value_type)
            counts[split] = {"documents": documents, "sentences": sentences, "tokens": tokens}
        manifest = {"tokenizer_hash": tokenizer_hash(tokenizer), "vocab_size": tokenizer.get_vocab_size(), "splits": counts,
                    "config": config}
        stage.write_json(tmp / "manifest.json", manifest)
        stage.write_stage_record(tmp, key=key, stage="tokens", config=config, outputs=counts)
    logger.info("tokens: %s -> %s", counts, output_dir)
    return output_dir


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
                doc_offsets = chunk.offsets.to_numpy()
                sent_offsets = inner.offsets.to_numpy()
                _arrays.append((doc_offsets, sent_offsets, inner.values.to_numpy()))
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
