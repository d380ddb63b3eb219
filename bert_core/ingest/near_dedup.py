"""Near-duplicate detection at corpus scale: MinHash bands sorted on disk, memory independent of the corpus size.

An in-memory LSH index (`bert_core.ingest.dedup.NearDuplicateIndex`) holds one 1 KB signature per kept document: about
6.5 GB for English Wikipedia's 6.5M articles. Here, as in datatrove's MinHash stages, nothing grows with the corpus
but a 4-byte parent per document in the last step:
1. `write_bands` (one unit per ingest part, any worker): each eligible document's signature is cut into b bands of
   r rows (datasketch's optimal b, r for the threshold, as its LSH index uses), each band hashed to 64 bits; per
   band the (hash, ordinal) pairs are sorted by hash and written beside the part's signatures.
2. `band_pairs` (one unit per band, any worker): the parts' sorted arrays are merged one hash range at a time
   (about 2^16 entries, whatever the corpus size). In each run of equal hashes the lowest ordinal pairs with every
   other member; a pair counts when its two signatures agree on at least `near_dedup_threshold` of their positions
   (the estimated Jaccard similarity the in-memory index also confirms with), read from the parts' signature files
   4,096 pairs at a time. Confirmed pairs are written per band.
3. `duplicate_clusters` (one process): union-find over the confirmed pairs, each cluster's root its lowest ordinal
   (its first document in corpus order), which is kept; every other member is a near duplicate.
Exact duplicates go the same way before them (`write_exact_keys`, `exact_duplicates`): per part the 128-bit
content-hash keys of its documents sorted on disk, merged one key range at a time; the first copy is kept.
The result is a function of the parts alone: the same set for any number of workers and any order of completion.
Clusters are transitive (A~B and B~C drop B and C even when A and C differ), where the in-memory index compares a
document only with the documents kept before it; `bench/dedup.py` measures both against planted duplicates.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from bert_core import stage

logger = logging.getLogger(__name__)

_RANGE_ENTRIES = 1 << 16  # (hash, ordinal) entries per hash range of a band's merge: its memory, not the corpus
_CONFIRM_PAIRS = 1 << 12  # candidate pairs whose signatures are read at a time (2 x 4,096 x 1 KB)
_KEY_SPACE = 1 << 64
_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant: mixes a band's rows into one 64-bit hash


def band_parameters(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising false positives + false negatives at `threshold`, as datasketch does."""
    from datasketch.lsh import _optimal_param  # lazy: datasketch imports scipy; only the band plan needs it

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, n) uint64: band k of each signature (its rows k*r .. k*r+r-1) mixed into one hash."""
    n = signatures.shape[0]
    out = np.zeros((bands, n), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(bands):
            acc = np.full(n, np.uint64(k + 1), dtype=np.uint64)
            for j in range(k * rows, (k + 1) * rows):
                acc = (acc ^ signatures[:, j]) * _MIX
                acc ^= acc >> np.uint64(29)
            out[k] = acc
    return out


def _part_files(work_dir: Path, part: int) -> dict[str, Path]:
    stem = work_dir / f"part-{part:06d}"
    return {name: Path(f"{stem}-{name}.npy") for name in ("ordinals", "signatures", "bands")}


def _save(path: Path, array: np.ndarray) -> None:
    with stage.atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def write_bands(spec: dict[str, Any]) -> dict[str, int]:
    """Unit 1: one part's eligible signatures, their ordinals and per-band sorted (hash, ordinal) arrays.

    `spec`: `signatures_file` (.npy, (n, num_perm) uint64, every row of the part), `eligible_file` (.npy bool, n),
    `first_ordinal`, `part`, `work_dir`, `bands`, `rows`. Skipped when its files are there.
    """
    files = _part_files(Path(spec["work_dir"]), spec["part"])
    if all(p.is_file() for p in files.values()):
        return {"part": spec["part"], "documents": int(np.load(files["ordinals"], mmap_mode="r").size)}
    signatures = np.load(spec["signatures_file"], mmap_mode="r")
    rows = np.flatnonzero(np.load(spec["eligible_file"]))
    kept = np.ascontiguousarray(signatures[rows])
    ordinals = (rows + spec["first_ordinal"]).astype(np.uint64)
    hashes = band_hashes(kept, spec["bands"], spec["rows"])
    bands = np.zeros((spec["bands"], rows.size, 2), dtype=np.uint64)
    for k in range(spec["bands"]):
        order = np.argsort(hashes[k], kind="stable")
        bands[k, :, 0], bands[k, :, 1] = hashes[k][order], ordinals[order]
    _save(files["signatures"], kept)
    _save(files["bands"], bands)
    _save(files["ordinals"], ordinals)  # last: its presence says the part is complete
    return {"part": spec["part"], "documents": int(rows.size)}


class _Signatures:
    """Signatures of every part, looked up by ordinal with positioned reads (not a memory map: scattered 1 KB reads
    of a mapping fault in whole runs of neighbouring pages, measured +95 MB of resident memory per 4,096 pairs at
    180k documents, so the resident set grew with the corpus). Only the ordinals are mapped."""

    def __init__(self, work_dir: Path, parts: list[int]):
        self.ordinals = [np.load(_part_files(work_dir, p)["ordinals"], mmap_mode="r") for p in parts]
        self.firsts = np.array([o[0] if o.size else np.iinfo(np.uint64).max for o in self.ordinals], dtype=np.uint64)
        self.files, self.starts = [], []
        for p in parts:
            f = open(_part_files(work_dir, p)["signatures"], "rb")  # noqa: SIM115 (closed in close())
            version = np.lib.format.read_magic(f)
            shape, _, _ = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)(f)
            self.width = shape[1] if len(shape) == 2 else 0
            self.files.append(f)
            self.starts.append(f.tell())

    def get(self, ordinals: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(ordinals, return_inverse=True)
        out = np.zeros((unique.size, self.width), dtype=np.uint64)
        part_of = np.searchsorted(self.firsts, unique, side="right") - 1
        size = self.width * 8
        for p in np.unique(part_of).tolist():
            where = np.flatnonzero(part_of == p)
            rows = np.searchsorted(self.ordinals[p], unique[where]).tolist()
            fd, start = self.files[p].fileno(), self.starts[p]
            data = b"".join(os.pread(fd, size, start + row * size) for row in rows)
            out[where] = np.frombuffer(data, dtype=np.uint64).reshape(len(rows), self.width)
        return out[inverse]

    def release(self) -> None:
        for array in self.ordinals:
            if isinstance(array, np.memmap) and array._mmap is not None:
                array._mmap.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        for f in self.files:
            f.close()


def _key_ranges(keys: list[np.ndarray], mapped: list[np.ndarray]):
    """The merge of sorted uint64 `keys` (one array per part) one key range at a time, about `_RANGE_ENTRIES`
    entries each whatever their number: per non-empty range, its (part, start, stop) slices. After each range the
    pages of the memory-mapped arrays `mapped` are dropped, so memory does not grow with the corpus."""
    num_ranges = max(1, math.ceil(sum(k.size for k in keys) / _RANGE_ENTRIES))
    for r in range(num_ranges):
        lo, hi = np.uint64(r * _KEY_SPACE // num_ranges), np.uint64((r + 1) * _KEY_SPACE // num_ranges - 1)
        slices = [(i, a, b) for i, k in enumerate(keys)
                  if (b := int(np.searchsorted(k, hi, "right"))) > (a := int(np.searchsorted(k, lo, "left")))]
        if slices:
            yield slices
        for array in mapped:
            array._mmap.madvise(mmap.MADV_DONTNEED)


def band_pairs(spec: dict[str, Any]) -> dict[str, int]:
    """Unit 2: band `band`'s confirmed near-duplicate pairs (lower ordinal, higher) over every part, to
    `band-NNN.npy`. `spec`: `work_dir`, `parts`, `band`, `threshold`. Skipped when written."""
    work_dir, band = Path(spec["work_dir"]), spec["band"]
    out_path = work_dir / f"band-{band:03d}.npy"
    if out_path.is_file():
        return {"band": band, "pairs": int(np.load(out_path, mmap_mode="r").shape[0])}
    sources = [np.load(_part_files(work_dir, p)["bands"], mmap_mode="r") for p in spec["parts"]]
    columns = [(s[band, :, 0], s[band, :, 1]) for s in sources if s.shape[1]]
    signatures = _Signatures(work_dir, spec["parts"])
    confirmed, candidates = [], 0
    for slices in _key_ranges([hashes for hashes, _ in columns], sources):
        hashes = np.concatenate([columns[i][0][a:b] for i, a, b in slices])
        ordinals = np.concatenate([columns[i][1][a:b] for i, a, b in slices])
        order = np.lexsort((ordinals, hashes))
        hashes, ordinals = hashes[order], ordinals[order]
        is_start = np.ones(hashes.size, dtype=bool)
        is_start[1:] = hashes[1:] != hashes[:-1]
        first = ordinals[is_start][np.cumsum(is_start) - 1]
        pair = first != ordinals  # every member of a run but its first, with the first
        a, b = first[pair], ordinals[pair]
        candidates += int(a.size)
        for start in range(0, a.size, _CONFIRM_PAIRS):
            x, y = a[start : start + _CONFIRM_PAIRS], b[start : start + _CONFIRM_PAIRS]
            agree = (signatures.get(x) == signatures.get(y)).mean(axis=1) >= spec["threshold"]
            confirmed.append(np.stack([x[agree], y[agree]], axis=1))
        signatures.release()
    signatures.close()
    pairs = np.concatenate(confirmed) if confirmed else np.zeros((0, 2), dtype=np.uint64)
    _save(out_path, pairs)
    return {"band": band, "pairs": int(pairs.shape[0]), "candidates": candidates}


def duplicate_clusters(work_dir: Path, bands: int, num_documents: int) -> np.ndarray:
    """Unit 3: ordinals of the near duplicates (every cluster member but its lowest ordinal), sorted."""
    parent = np.arange(num_documents, dtype=np.int64 if num_documents >= 1 << 31 else np.int32)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    for band in range(bands):
        pairs = np.load(work_dir / f"band-{band:03d}.npy", mmap_mode="r")
        for start in range(0, pairs.shape[0], _RANGE_ENTRIES):
            for a, b in pairs[start : start + _RANGE_ENTRIES].tolist():
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)  # the root stays the cluster's lowest ordinal
    return np.flatnonzero(parent != np.arange(num_documents)).astype(np.uint64)


def write_exact_keys(path: Path, content_hashes: list[str], eligible: np.ndarray, first_ordinal: int) -> Path:
    """One part's exact-dedup keys: (3, m) uint64 rows high, low, ordinal of its eligible documents, the high and
    low words the first 128 bits of the hex content hash (sha1), sorted by (high, low, ordinal)."""
    rows = np.flatnonzero(eligible)
    digest = b"".join(bytes.fromhex(content_hashes[i])[:16] for i in rows.tolist())
    words = np.frombuffer(digest, dtype=">u8").astype(np.uint64).reshape(-1, 2)
    ordinals = rows.astype(np.uint64) + np.uint64(first_ordinal)
    order = np.lexsort((ordinals, words[:, 1], words[:, 0]))
    _save(path, np.stack([words[order, 0], words[order, 1], ordinals[order]]) if rows.size else
          np.zeros((3, 0), dtype=np.uint64))
    return path


def exact_duplicates(key_files: list[Path]) -> np.ndarray:
    """Ordinals of every copy but the first (lowest ordinal) of each content hash over the parts' key files
    (`write_exact_keys`), sorted: the files are merged one range of the high word at a time (about 2^16 entries,
    whatever the corpus size), as a band is in `band_pairs`, so memory does not grow with the corpus."""
    sources = [s for s in (np.load(path, mmap_mode="r") for path in key_files) if s.shape[1]]
    duplicates = []
    for slices in _key_ranges([s[0] for s in sources], sources):
        high, low, ordinals = np.concatenate([np.asarray(sources[i][:, a:b]) for i, a, b in slices], axis=1)
        order = np.lexsort((ordinals, low, high))
        high, low, ordinals = high[order], low[order], ordinals[order]
        repeat = np.zeros(ordinals.size, dtype=bool)
        repeat[1:] = (high[1:] == high[:-1]) & (low[1:] == low[:-1])
        duplicates.append(ordinals[repeat])
    return np.sort(np.concatenate(duplicates)) if duplicates else np.zeros(0, dtype=np.uint64)


def near_duplicates(parts: list[dict[str, Any]], *, threshold: float, num_perm: int, work_dir: str | Path,
                    executor=None) -> np.ndarray:
    """Ordinals of the near duplicates among the eligible documents of `parts`, in corpus order.

    `parts`: per part in corpus order, `signatures_file` (.npy (n, num_perm) uint64) and `eligible_file` (.npy bool,
    n): documents already rejected (contaminated, exact duplicates) are not eligible, and neither keep nor lose
    others. Ordinals number every row of every part in order. Units 1 and 2 run on `executor` when given.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    bands, rows = band_parameters(threshold, num_perm)
    specs, first = [], 0
    for index, part in enumerate(parts):
        n = int(np.load(part["eligible_file"], mmap_mode="r").size)
        specs.append({**part, "part": index, "first_ordinal": first, "work_dir": str(work_dir), "bands": bands,
                      "rows": rows, "documents": n})
        first += n
    stage.map_units(write_bands, specs, executor, cost=lambda s: s["documents"])
    band_specs = [{"work_dir": str(work_dir), "parts": list(range(len(specs))), "band": k, "threshold": threshold}
                  for k in range(bands)]
    stats = stage.map_units(band_pairs, band_specs, executor)
    duplicates = duplicate_clusters(work_dir, bands, first)
    logger.info("near dedup: %d documents, %d bands x %d rows, %d confirmed pairs, %d near duplicates", first, bands,
                rows, sum(s["pairs"] for s in stats), duplicates.size)
    return duplicates
