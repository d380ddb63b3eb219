"""Arrow shard files and their manifest.

A split is a directory of `shard-{index:05d}.arrow` files (uncompressed Arrow IPC *file* format, so that they can be
memory-mapped and read with no copy) and a `manifest.json` holding the schema version, counts, token totals, a
sha256 per shard and whatever the writer adds (config, tokenizer hash, quality figures). Token ids are stored in the
narrowest unsigned integer type that holds the vocabulary and without padding. Every shard holds the same number
of examples, so that data-parallel ranks never wait on one another; the remainder is dropped and counted.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import mmap
import resource
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from bert_core import stage

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_LIST_COLUMNS = ("input_ids", "token_type_ids", "masked_lm_positions", "masked_lm_labels")


class MappedTable:
    """An Arrow IPC file memory-mapped read-only: `table` is zero-copy over the mapping.

    `release()` drops the pages this process touched from its resident set (they stay in the page cache and fault
    back in on the next access), so streaming over files larger than memory keeps a flat footprint.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.table = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(self._mmap))).read_all()

    def release(self) -> None:
        self._mmap.madvise(mmap.MADV_DONTNEED)


def with_system_memory_pool(function):
    """Run `function` with Arrow allocating from the system allocator, not mimalloc.

    Arrow's default mimalloc pool keeps freed memory for reuse, so a pass that allocates one shard after another
    grows its RSS with the number of shards (measured: +65 MB over 5 shards); the system pool returns it, at the
    same speed for this workload. Buffers remember their pool, so switching back is safe.
    """
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        previous = pa.default_memory_pool()
        pa.set_memory_pool(pa.system_memory_pool())
        try:
            return function(*args, **kwargs)
        finally:
            pa.set_memory_pool(previous)

    return wrapper


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim; a no-op elsewhere).

    glibc raises its mmap threshold after large frees, so buffers of a shard's size end up on the heap and stay
    resident after they are freed; trimming after each shard keeps a long streaming pass at a flat RSS.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def write_table_file(path: str | Path, table: pa.Table, *, max_chunksize: int | None = None) -> None:
    """Write an Arrow IPC file atomically (temporary name, then rename)."""
    with stage.atomic_file(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max_chunksize)


def id_type(vocab_size: int) -> pa.DataType:
    """The narrowest unsigned integer type that holds every token id."""
    if vocab_size <= 1 << 8:
        return pa.uint8()
    if vocab_size <= 1 << 16:
        return pa.uint16()
    return pa.uint32()


def numpy_dtype(arrow_type: pa.DataType) -> np.dtype:
    """The NumPy dtype of an Arrow integer type (without `to_pandas_dtype`, which imports pandas)."""
    kind = "u" if pa.types.is_unsigned_integer(arrow_type) else "i"
    return np.dtype(f"{kind}{arrow_type.bit_width // 8}")


def arrow_array(values: np.ndarray, arrow_type: pa.DataType | None = None) -> pa.Array:
    """A NumPy integer array as an Arrow array, zero-copy when the dtype already matches.

    `pa.array(ndarray)` imports pandas on first use (about 0.4 s per process); building from the buffer does not.
    """
    arrow_type = arrow_type or pa.from_numpy_dtype(np.asarray(values).dtype)
    values = np.ascontiguousarray(values, dtype=numpy_dtype(arrow_type))
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def numpy_view(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A primitive Arrow array without nulls as NumPy, zero-copy for one chunk. `to_numpy()` imports pandas
    (about 0.4 s in every worker process that opens a store)."""
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks == 1:
            return numpy_view(array.chunk(0))
        return np.concatenate([numpy_view(c) for c in array.chunks] or [np.zeros(0, numpy_dtype(array.type))])
    dtype = numpy_dtype(array.type)
    if len(array) == 0:
        return np.zeros(0, dtype)
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=array.offset + len(array))[array.offset:]


def list_array(offsets: np.ndarray, values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """A list<value_type> array from int32 offsets and flat values."""
    return pa.ListArray.from_arrays(arrow_array(offsets, pa.int32()), arrow_array(values, value_type))


def shard_schema(vocab_size: int, max_seq_length: int, columns: set[str]) -> pa.Schema:
    position_type = id_type(max_seq_length)
    types = {
        "input_ids": pa.list_(id_type(vocab_size)),
        "token_type_ids": pa.list_(pa.uint8()),
        "next_sentence_label": pa.int8(),
        "length": pa.uint16() if max_seq_length < 1 << 16 else pa.uint32(),
        "masked_lm_positions": pa.list_(position_type),
        "masked_lm_labels": pa.list_(id_type(vocab_size)),
    }
    return pa.schema([(name, types[name]) for name in types if name in columns])


def _list_array(rows: list[np.ndarray], value_type: pa.DataType) -> pa.Array:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(rows) if rows else np.zeros(0)
    return list_array(offsets, values, value_type)


class ShardWriter:
    """Stream rows (Arrow tables in the shard schema, any batch sizes) into equal-size shards + manifest.

    The total row count is known up front, so shard sizes are fixed before the first row arrives: `num_shards`
    = max(1, total // examples_per_shard), each `total // num_shards` rows; the last `total % num_shards` rows are
    dropped and counted. Each shard is written under a temporary name, renamed, then checksummed; only one shard's
    rows are held at a time. Extra columns in the tables (e.g. a shuffle key) are not written.
    """

    def __init__(self, output_dir: str | Path, *, total: int, examples_per_shard: int, schema: pa.Schema):
        if total <= 0:
            raise ValueError(f"no examples to write into {output_dir}")
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.total = total
        self.num_shards = max(1, total // examples_per_shard)
        self.per_shard = total // self.num_shards
        self.shards: list[dict[str, Any]] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add(self, table: pa.Table) -> None:
        if len(self.shards) == self.num_shards or table.num_rows == 0:
            return
        self._pending.append(table.select(self.schema.names).cast(self.schema))
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.per_shard and len(self.shards) < self.num_shards:
            rows = pa.concat_tables(self._pending)
            self._write(rows.slice(0, self.per_shard).combine_chunks())
            rest = rows.slice(self.per_shard)
            self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def _write(self, table: pa.Table) -> None:
        name = f"shard-{len(self.shards):05d}.arrow"
        write_table_file(self.output_dir / name, table, max_chunksize=max(1, table.num_rows))
        release_free_memory()
        self.shards.append({
            "file": name,
            "num_examples": table.num_rows,
            "num_tokens": int(pa.compute.sum(table.column("length")).as_py() or 0),
            "sha256": stage.hash_file(self.output_dir / name),
        })

    def finish(self, *, vocab_size: int, metadata: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest (after checking every shard is full); return it."""
        if len(self.shards) != self.num_shards:
            raise ValueError(f"{self.output_dir}: {len(self.shards)} of {self.num_shards} shards filled; "
                             f"fewer rows arrived than the {self.total} announced")
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "schema": {f.name: str(f.type) for f in self.schema},
            "vocab_size": vocab_size,
            "num_shards": self.num_shards,
            "num_examples": self.per_shard * self.num_shards,
            "num_tokens": sum(s["num_tokens"] for s in self.shards),
            "dropped_for_equal_shards": self.total - self.per_shard * self.num_shards,
            "shards": self.shards,
            **metadata,
        }
        stage.write_json(self.output_dir / MANIFEST, manifest)
        return manifest


def write_shards(
    columns: dict[str, list],
    output_dir: str | Path,
    *,
    vocab_size: int,
    examples_per_shard: int,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Write in-memory columns (lists of per-example arrays / scalars) as equal-size shards; return the manifest."""
    total = len(columns["input_ids"])
    if total == 0:
        raise ValueError(f"no examples to write into {output_dir}")
    lengths = np.fromiter((len(r) for r in columns["input_ids"]), dtype=np.int64, count=total)
    max_seq_length = int(metadata.get("max_seq_length", lengths.max()))
    if lengths.max() > max_seq_length:
        raise ValueError(f"an example has {lengths.max()} tokens, over max_seq_length={max_seq_length}")
    schema = shard_schema(vocab_size, max_seq_length, set(columns) | {"length"})
    arrays = []
    for f in schema:
        if f.name == "length":
            arrays.append(arrow_array(lengths, f.type))
        elif f.name in _LIST_COLUMNS:
            arrays.append(_list_array(columns[f.name], f.type.value_type))
        else:
            arrays.append(arrow_array(np.asarray(columns[f.name]), f.type))
    writer = ShardWriter(output_dir, total=total, examples_per_shard=examples_per_shard, schema=schema)
    writer.add(pa.Table.from_arrays(arrays, schema=schema))
    return writer.finish(vocab_size=vocab_size, metadata=metadata)


def read_manifest(shards_dir: str | Path) -> dict[str, Any]:
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {shards_dir} is not a finished shard directory")
    manifest = stage.read_json(path)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {manifest.get('schema_version')}, this bertflow reads {SCHEMA_VERSION}")
    return manifest


def verify_shards(shards_dir: str | Path) -> None:
    """Raise if a shard is missing or its checksum differs from the manifest."""
    manifest = read_manifest(shards_dir)
    for shard in manifest["shards"]:
        path = Path(shards_dir) / shard["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} listed in the manifest is missing")
        if stage.hash_file(path) != shard["sha256"]:
            raise ValueError(f"{path}: checksum differs from the manifest (corrupt or replaced shard)")


def open_shards(shards_dir: str | Path) -> tuple[list[pa.Table], dict[str, Any]]:
    """Memory-map every shard of a split (no bytes copied); return the tables and the manifest."""
    manifest = read_manifest(shards_dir)
    tables = []
    for shard in manifest["shards"]:
        source = pa.memory_map(str(Path(shards_dir) / shard["file"]), "r")
        table = pa.ipc.open_file(source).read_all()
        if table.num_rows != shard["num_examples"]:
            raise ValueError(f"{shard['file']}: {table.num_rows} rows, manifest says {shard['num_examples']}")
        tables.append(table)
    return tables, manifest


_KEY_SPACE = 1 << 64
_MERGE_RANGE_EXAMPLES = 2048  # examples per key range of the merge: its memory, not the shard size


def _allow_open_files(needed: int) -> None:
    """Raise the open-file limit (each memory-mapped part file holds a descriptor) or say what to change."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise OSError(f"merging {needed - 64} part files needs {needed} open files, over this system's limit of "
                      f"{hard}; raise it (ulimit -n) or use a larger unit_tokens")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


def merge_units(unit_files: list[Path], total: int, output_dir: Path, *, schema: pa.Schema, examples_per_shard: int,
                vocab_size: int, metadata: dict[str, Any]) -> dict[str, Any]:
    """Stream the units' examples in shuffle-key order into equal-size shards; return the manifest.

    Each part file is sorted by key, so key range r of every file is a contiguous slice: the merge holds one key
    range (about 2,048 examples) and one shard's rows at a time, whatever the corpus size.
    """
    writer = ShardWriter(output_dir, total=total, examples_per_shard=examples_per_shard, schema=schema)
    _allow_open_files(len(unit_files) + 64)
    sources = []
    for path in unit_files:
        store = MappedTable(path)
        sources.append((store, numpy_view(store.table.column("shuffle_key"))))
    num_ranges = max(1, math.ceil(total / _MERGE_RANGE_EXAMPLES))
    for r in range(num_ranges):
        lo, hi = np.uint64(r * _KEY_SPACE // num_ranges), np.uint64(((r + 1) * _KEY_SPACE // num_ranges) - 1)
        pieces = []
        for store, keys in sources:
            a, b = np.searchsorted(keys, lo, "left"), np.searchsorted(keys, hi, "right")
            if b > a:
                pieces.append(store.table.slice(int(a), int(b - a)))
        if pieces:
            rows = pa.concat_tables(pieces)
            writer.add(rows.take(pa.compute.sort_indices(rows, [("shuffle_key", "ascending")])))
        for store, _ in sources:
            store.release()
    return writer.finish(vocab_size=vocab_size, metadata=metadata)


class ShardDataset:
    """Random access to the examples of one split of Arrow shards: a map-style dataset (`len`, `[index]`) that torch's
    DataLoader takes as it is. No torch here: the example-generation workers import this module."""

    def __init__(self, shards_dir: str | Path):
        tables, self.manifest = open_shards(shards_dir)
        self._columns: list[dict[str, tuple[np.ndarray, np.ndarray] | np.ndarray]] = []
        for table in tables:
            table = table.combine_chunks()
            cols: dict = {}
            for name in table.column_names:
                array = table.column(name).chunk(0) if table.num_rows else table.column(name).combine_chunks()
                if hasattr(array, "offsets"):
                    cols[name] = (array.offsets.to_numpy(), array.values.to_numpy())
                else:
                    cols[name] = array.to_numpy()
            self._columns.append(cols)
        counts = [t.num_rows for t in tables]
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.lengths = np.concatenate([t.column("length").to_numpy() for t in tables]) if tables else np.zeros(0)
        self.static_masks = "masked_lm_positions" in self.manifest["schema"]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict[str, np.ndarray | int]:
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        row = index - int(self._starts[shard])
        cols = self._columns[shard]
        item: dict = {}
        for name, value in cols.items():
            if isinstance(value, tuple):
                offsets, values = value
                item[name] = values[offsets[row] : offsets[row + 1]]
            else:
                item[name] = value[row]
        return item
