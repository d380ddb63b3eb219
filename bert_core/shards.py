"""Arrow shard files and their manifest.

A split is a directory of `shard-{index:05d}.arrow` files (uncompressed Arrow IPC *file* format, so that they can be
memory-mapped and read with no copy) and a `manifest.json` holding the schema version, counts, token totals, a
sha256 per shard and whatever the writer adds (config, tokenizer hash, quality figures). Token ids are stored in the
narrowest unsigned integer type that holds the vocabulary and without padding. Every shard holds the same number
of examples, so that data-parallel ranks never wait on one another; the remainder is dropped and counted.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bert_core import stage

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_LIST_COLUMNS = ("input_ids", "token_type_ids", "masked_lm_positions", "masked_lm_labels")


def id_type(vocab_size: int) -> pa.DataType:
    """The narrowest unsigned integer type that holds every token id."""
    if vocab_size <= 1 << 8:
        return pa.uint8()
    if vocab_size <= 1 << 16:
        return pa.uint16()
    return pa.uint32()


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
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(value_type.to_pandas_dtype())))


def write_shards(
    columns: dict[str, list],
    output_dir: str | Path,
    *,
    vocab_size: int,
    examples_per_shard: int,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Write equal-size shards plus `manifest.json` into `output_dir`; return the manifest."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    total = len(columns["input_ids"])
    if total == 0:
        raise ValueError(f"no examples to write into {output_dir}")
    num_shards = max(1, total // examples_per_shard)
    per_shard = total // num_shards
    dropped = total - per_shard * num_shards
    lengths = np.fromiter((len(r) for r in columns["input_ids"]), dtype=np.int64, count=total)
    max_seq_length = int(metadata.get("max_seq_length", lengths.max()))
    if lengths.max() > max_seq_length:
        raise ValueError(f"an example has {lengths.max()} tokens, over max_seq_length={max_seq_length}")
    schema = shard_schema(vocab_size, max_seq_length, set(columns) | {"length"})

    shards = []
    for index in range(num_shards):
        lo, hi = index * per_shard, (index + 1) * per_shard
        arrays = []
        for f in schema:
            if f.name == "length":
                arrays.append(pa.array(lengths[lo:hi].astype(f.type.to_pandas_dtype())))
            elif f.name in _LIST_COLUMNS:
                arrays.append(_list_array(columns[f.name][lo:hi], f.type.value_type))
            else:
                arrays.append(pa.array(np.asarray(columns[f.name][lo:hi]), type=f.type))
        table = pa.Table.from_arrays(arrays, schema=schema)
        name = f"shard-{index:05d}.arrow"
        tmp = output_dir / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            writer.write_table(table, max_chunksize=per_shard)
        os.replace(tmp, output_dir / name)
        shards.append({
            "file": name,
            "num_examples": hi - lo,
            "num_tokens": int(lengths[lo:hi].sum()),
            "sha256": stage.hash_file(output_dir / name),
        })
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "schema": {f.name: str(f.type) for f in schema},
        "vocab_size": vocab_size,
        "num_shards": num_shards,
        "num_examples": per_shard * num_shards,
        "num_tokens": sum(s["num_tokens"] for s in shards),
        "dropped_for_equal_shards": dropped,
        "shards": shards,
        **metadata,
    }
    stage.write_json(output_dir / MANIFEST, manifest)
    return manifest


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
