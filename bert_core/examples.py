"""The example-generation stage: WordPiece tokenizer + sentence pairs + MLM masks -> equal-size Arrow shards.

Pairs follow google-research/bert's create_pretraining_data.py: for each document, sentences are gathered into a
chunk until a target length is reached (max_seq_length - 3, or with probability `short_seq_prob` a random shorter
target); segment A is a random prefix of the chunk; with probability 0.5 (and always when the chunk has one
sentence) segment B is a random span of a different document of the whole split and the unused sentences are put
back, otherwise B is the rest of the chunk; the pair is then trimmed to fit, from the longer side, at the front or
the back at random. One deliberate difference: a chunk of a single sentence also draws the 50% coin (its
actual-next pair uses the neighbouring sentences) instead of always getting a random segment, which put google's
labels at ~62% random-next on Wikipedia text at max_seq_length 64. `pair_objective="sop"` gives ALBERT's sentence
order prediction; `"none"` packs full sentences up to max_seq_length (RoBERTa's FULL-SENTENCES: contiguous
sentences that may cross document boundaries, an extra [SEP] between documents, no pair label).

How it runs, so that memory stays flat and the output does not depend on the number of workers:
1. The corpus is tokenized once into a memory-mapped token store (`bert_core.tokens`).
2. Each split is cut into units of about `unit_tokens` tokens of whole documents. A unit is generated on its own
   (any process, any machine) with random streams seeded by (seed, split, unit): pairs are spans of token
   positions, gathered in one vectorised pass, masked (static), given a 64-bit random shuffle key, sorted by it and
   written to a part file. Random-next segments are read from anywhere in the memory-mapped store.
3. The merge streams the part files in key order (one key range at a time) into equal-size shards. Sorting by
   independent random keys is a uniform shuffle of the whole split, and it is the same whatever the units' order
   of completion or the number of workers, so the shards are byte-identical.
Part files live under `<output>-parts/<key>/` until the merge has written the shards: a crashed run resumes with
the units it had not finished. Quality figures are counts summed over units, checked by `check_quality`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bert_core import stage
from bert_core.config import check_choice, check_fields, check_fraction, check_positive, check_range
from bert_core.masking import MaskingConfig, mask_flat
from bert_core.shards import (MappedTable, ShardWriter, arrow_array, list_array, shard_schema, verify_shards,
                              with_system_memory_pool, write_table_file)
from bert_core.tokenizer import TokenizerConfig
from bert_core.tokens import TokenStore

logger = logging.getLogger(__name__)

PAIR_OBJECTIVES = ("nsp", "sop", "none")
CLS_ID, SEP_ID, MASK_ID, UNK_ID, NUM_SPECIAL = 2, 3, 4, 1, 5  # bert_core.tokenizer.SPECIAL_TOKENS order
_KEY_SPACE = 1 << 64
_MERGE_RANGE_EXAMPLES = 2048  # examples per key range of the merge: its memory, not the shard size


@dataclass(frozen=True, kw_only=True)
class ExamplesConfig:
    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    # "nsp": B is the actual next segment or a random one; "sop": A and B swapped or not; "none": full sentences
    pair_objective: str = "nsp"
    dupe_factor: int = 1
    masking: str = "static"  # "static": masks in the shards; "dynamic": stored unmasked, masked per batch
    examples_per_shard: int = 8192
    seed: int = 12345
    # Documents per unit of work, in tokens. Part of the output's identity (units seed their own random streams),
    # unlike the number of workers, which never changes the output.
    unit_tokens: int = 1 << 18
    quality_gates: bool = True  # fail the stage when the examples are not what BERT expects (see check_quality)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    mlm: MaskingConfig = field(default_factory=MaskingConfig)

    def __post_init__(self):
        check_fields(self)
        check_choice(self, "pair_objective", PAIR_OBJECTIVES)
        check_choice(self, "masking", ("static", "dynamic"))
        check_range(self, "max_seq_length", low=8)
        check_fraction(self, "short_seq_prob")
        check_positive(self, "dupe_factor", "examples_per_shard", "unit_tokens")


# A pair example as spans of token positions: (chunk_a, a_lo, a_hi, chunk_b, b_lo, b_hi, label), where tokens of A
# are `store.values(chunk_a)[a_lo:a_hi]`. Label 1 = B is a random segment (NSP) or the segments are swapped (SOP).
Pair = tuple[int, int, int, int, int, int, int]


def truncate_spans(a_lo: int, a_hi: int, b_lo: int, b_hi: int, max_num_tokens: int,
                   rng: random.Random) -> tuple[int, int, int, int]:
    """Trim the longer segment, one token at a time from its front or back at random, until the pair fits.

    Same distribution as google-research/bert's token-by-token loop (ties trim B), done in runs: while one side is
    longer, the next k removals all hit it, so k coins are drawn at once.
    """
    while (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
        len_a, len_b = a_hi - a_lo, b_hi - b_lo
        excess = len_a + len_b - max_num_tokens
        steps = max(1, min(excess, abs(len_a - len_b)))
        front = bin(rng.getrandbits(steps)).count("1")
        if len_a > len_b:
            a_lo, a_hi = a_lo + front, a_hi - (steps - front)
        else:
            b_lo, b_hi = b_lo + front, b_hi - (steps - front)
    return a_lo, a_hi, b_lo, b_hi


def document_pairs(store: TokenStore, index: int, *, max_seq_length: int, short_seq_prob: float,
                   rng: random.Random, pair_objective: str = "nsp") -> list[Pair]:
    """Sentence pairs from document `index` of `store` (google-research/bert's algorithm, see the module doc).

    With `pair_objective="sop"` (ALBERT's sentence-order prediction) B is always the actual continuation and the
    two segments are swapped with probability 0.5 (label 1 = swapped). Works on sentence boundaries only: no token
    is copied here.
    """
    if pair_objective not in {"nsp", "sop"}:
        raise ValueError(f"document_pairs makes 'nsp' or 'sop' pairs, not {pair_objective!r}")
    chunk_id, bounds = store.sentence_bounds(index)
    n = len(bounds) - 1
    max_num_tokens = max_seq_length - 3  # [CLS], [SEP], [SEP]
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)

    pairs: list[Pair] = []
    first = 0  # first sentence of the current chunk
    i = 0
    while i < n:
        if i == n - 1 or bounds[i + 1] - bounds[first] >= target:
            count = i - first + 1
            a_end = first + (rng.randint(1, count - 1) if count >= 2 else 1)
            a_lo, a_hi = bounds[first], bounds[a_end]
            b_chunk = chunk_id
            if count == 1 and n > 1 and (pair_objective == "sop" or rng.random() < 0.5):
                # A one-sentence chunk: google-research/bert always pairs it with a random segment, which skews the
                # labels towards random-next when sentences are long relative to max_seq_length. Here it draws the
                # coin too; its actual-next pair takes at least one neighbouring sentence (the following ones, or
                # at the end of the document the preceding ones before it), even when A alone fills the target.
                label = 0
                if i + 1 < n:
                    b_lo = bounds[i + 1]
                    i += 1
                    while i + 1 < n and (a_hi - a_lo) + (bounds[i + 1] - b_lo) < target:
                        i += 1
                    b_hi = bounds[i + 1]
                else:
                    b_lo, b_hi = bounds[i], bounds[i + 1]
                    j = i - 1
                    while j > 0 and (bounds[i] - bounds[j]) + (b_hi - b_lo) < target:
                        j -= 1
                    a_lo, a_hi = bounds[j], bounds[i]
            elif pair_objective == "sop":
                label = 0
                b_lo, b_hi = bounds[a_end], bounds[i + 1]  # empty for a one-sentence document: skipped below
            elif count == 1 or rng.random() < 0.5:
                label = 1
                target_b = target - (a_hi - a_lo)
                other = index
                for _ in range(10):
                    other = rng.randint(0, len(store) - 1)
                    if other != index:
                        break
                b_chunk, other_bounds = store.sentence_bounds(other)
                start = rng.randint(0, len(other_bounds) - 2)
                stop = start + 1
                while stop < len(other_bounds) - 1 and other_bounds[stop] - other_bounds[start] < target_b:
                    stop += 1
                b_lo, b_hi = other_bounds[start], other_bounds[stop]
                i -= count - (a_end - first)  # put the unused sentences back
            else:
                label = 0
                b_lo, b_hi = bounds[a_end], bounds[i + 1]
            if pair_objective == "sop" and b_hi > b_lo and rng.random() < 0.5:
                a_lo, a_hi, b_lo, b_hi, label = b_lo, b_hi, a_lo, a_hi, 1
            if (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
                a_lo, a_hi, b_lo, b_hi = truncate_spans(a_lo, a_hi, b_lo, b_hi, max_num_tokens, rng)
            if a_hi > a_lo and b_hi > b_lo:
                pairs.append((chunk_id, a_lo, a_hi, b_chunk, b_lo, b_hi, label))
            first = i + 1
        i += 1
    return pairs


def full_sentence_segments(store: TokenStore, start: int, stop: int, max_seq_length: int) -> list[list[tuple[int, int, int]]]:
    """RoBERTa's FULL-SENTENCES packing of documents [start, stop): each example a list of (chunk, lo, hi) segments.

    Whole sentences are added while `[CLS]` + segments + one `[SEP]` after each segment fit in max_seq_length; a
    document boundary starts a new segment (so an extra [SEP] separates documents). A sentence longer than the
    maximum is cut into pieces of the maximum length, so no token is lost.
    """
    examples: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    used = 1  # [CLS]
    for index in range(start, stop):
        chunk, bounds = store.sentence_bounds(index)
        open_segment = False
        for j in range(len(bounds) - 1):
            lo, hi = bounds[j], bounds[j + 1]
            cost = (hi - lo) + (0 if open_segment else 1)
            if used + cost > max_seq_length and current:
                examples.append(current)
                current, used, open_segment = [], 1, False
                cost = hi - lo + 1
            if used + cost > max_seq_length:  # one sentence longer than an example: pieces of the maximum
                piece = max_seq_length - 2
                while hi - lo > piece:
                    examples.append([(chunk, lo, lo + piece)])
                    lo += piece
                cost = hi - lo + 1
            if open_segment:
                c, seg_lo, _ = current[-1]
                current[-1] = (c, seg_lo, hi)
            else:
                current.append((chunk, lo, hi))
                open_segment = True
            used += cost
    if current:
        examples.append(current)
    return examples


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [s, s + n) for every (s, n)."""
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts - before, lengths) + np.arange(total)


@dataclass
class UnitExamples:
    """The examples of one unit, flat: sequence i is `input_ids[offsets[i]:offsets[i+1]]`."""

    input_ids: np.ndarray
    offsets: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray | None  # pair labels; None for pair_objective="none"
    keys: np.ndarray | None = None  # shuffle keys, ascending, when the examples were laid out in key order


def assemble(store: TokenStore, segment_example: np.ndarray, segment_chunk: np.ndarray, segment_lo: np.ndarray,
             segment_len: np.ndarray, segment_type: np.ndarray, num_examples: int) -> UnitExamples:
    """`[CLS] seg [SEP] seg [SEP] ...` for every example, gathered from the store in one pass per token chunk.

    Segments are listed in example order; a segment's tokens and the [SEP] after it get the segment's type id.
    """
    lengths = 1 + np.bincount(segment_example, weights=segment_len + 1, minlength=num_examples).astype(np.int64)
    offsets = np.zeros(num_examples + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    dtype = store.values(0).dtype if store.num_chunks else np.uint32
    out = np.empty(int(offsets[-1]), dtype=dtype)
    out[offsets[:-1]] = CLS_ID
    span = segment_len + 1
    before = np.cumsum(span) - span
    first_segment = np.searchsorted(segment_example, np.arange(num_examples))
    dst = offsets[segment_example] + 1 + before - before[first_segment[segment_example]]
    out[dst + segment_len] = SEP_ID
    order = np.argsort(segment_chunk, kind="stable")
    chunks, starts = np.unique(segment_chunk[order], return_index=True)
    for chunk, group in zip(chunks, np.split(order, starts[1:])):
        out[_ranges(dst[group], segment_len[group])] = store.values(int(chunk))[_ranges(segment_lo[group], segment_len[group])]
    types = np.zeros(out.size, dtype=np.uint8)
    typed = segment_type > 0
    if typed.any():
        types[_ranges(dst[typed], segment_len[typed] + 1)] = np.repeat(segment_type[typed], segment_len[typed] + 1)
    return UnitExamples(out, offsets, types, None)


@dataclass(frozen=True)
class Unit:
    """A unit of work: documents [start, stop) of one split's token store."""

    split: str
    index: int
    start: int
    stop: int
    tokens: int


def plan_units(store: TokenStore, split: str, unit_tokens: int) -> list[Unit]:
    """Contiguous runs of whole documents of about `unit_tokens` tokens (a function of the store only)."""
    counts = store.document_tokens()
    if counts.size == 0:
        return []
    before = np.cumsum(counts) - counts
    bucket = before // max(1, unit_tokens)
    starts = np.flatnonzero(np.diff(bucket, prepend=-1))
    stops = np.append(starts[1:], counts.size)
    return [Unit(split, u, int(a), int(b), int(counts[a:b].sum())) for u, (a, b) in enumerate(zip(starts, stops))]


def _split_index(split: str) -> int:
    return {"train": 0, "validation": 1}.get(split, 2)


def unit_examples(store: TokenStore, unit: Unit, config: ExamplesConfig, *,
                  keys_rng: np.random.Generator | None = None) -> UnitExamples:
    """All examples of a unit (dupe_factor passes): in generation order, or given `keys_rng`, each with a random
    64-bit shuffle key (`examples.keys`) and sorted by it."""
    rng = random.Random(f"bertflow-examples:{config.seed}:{unit.split}:{unit.index}")
    seg_example: list[int] = []
    seg_chunk: list[int] = []
    seg_lo: list[int] = []
    seg_len: list[int] = []
    seg_type: list[int] = []
    labels: list[int] = []
    count = 0
    for _ in range(config.dupe_factor):
        if config.pair_objective == "none":
            for segments in full_sentence_segments(store, unit.start, unit.stop, config.max_seq_length):
                for chunk, lo, hi in segments:
                    seg_example.append(count)
                    seg_chunk.append(chunk)
                    seg_lo.append(lo)
                    seg_len.append(hi - lo)
                    seg_type.append(0)
                count += 1
            continue
        for index in range(unit.start, unit.stop):
            for chunk_a, a_lo, a_hi, chunk_b, b_lo, b_hi, label in document_pairs(
                    store, index, max_seq_length=config.max_seq_length, short_seq_prob=config.short_seq_prob, rng=rng,
                    pair_objective=config.pair_objective):
                seg_example += (count, count)
                seg_chunk += (chunk_a, chunk_b)
                seg_lo += (a_lo, b_lo)
                seg_len += (a_hi - a_lo, b_hi - b_lo)
                seg_type += (0, 1)
                labels.append(label)
                count += 1
    segment_example = np.asarray(seg_example, dtype=np.int64)
    segment_chunk, segment_lo = np.asarray(seg_chunk, dtype=np.int64), np.asarray(seg_lo, dtype=np.int64)
    segment_len, segment_type = np.asarray(seg_len, dtype=np.int64), np.asarray(seg_type, dtype=np.uint8)
    label_array = np.asarray(labels, dtype=np.int8) if config.pair_objective != "none" else None
    keys = None
    if keys_rng is not None:
        # Draw each example's shuffle key and lay the examples out in key order before gathering any token, so
        # the unit comes out sorted without a second copy.
        keys = keys_rng.integers(0, _KEY_SPACE, size=count, dtype=np.uint64, endpoint=False)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        per_example = np.bincount(segment_example, minlength=count)
        first = np.cumsum(per_example) - per_example
        moved = _ranges(first[order], per_example[order])
        segment_example = np.repeat(np.arange(count), per_example[order])
        segment_chunk, segment_lo = segment_chunk[moved], segment_lo[moved]
        segment_len, segment_type = segment_len[moved], segment_type[moved]
        if label_array is not None:
            label_array = label_array[order]
    examples = assemble(store, segment_example, segment_chunk, segment_lo, segment_len, segment_type, count)
    examples.labels = label_array
    examples.keys = keys
    return examples


@lru_cache(maxsize=4)
def _vocab_flags(path: str) -> tuple[np.ndarray, np.ndarray]:
    flags = np.load(path)
    return flags["is_special"], flags["is_continuation"]


def unit_statistics(examples: UnitExamples, masked: tuple | None, is_special: np.ndarray, max_seq_length: int) -> dict[str, Any]:
    """Counts that sum over units into the split's quality figures (see `quality_from_statistics`)."""
    lengths = np.diff(examples.offsets)
    stats: dict[str, Any] = {
        "num_examples": int(lengths.size),
        "num_tokens": int(lengths.sum()),
        "max_length": int(lengths.max()) if lengths.size else 0,
        "label_sum": int(examples.labels.sum()) if examples.labels is not None else None,
        "unk": int((examples.input_ids == UNK_ID).sum()),
        "length_histogram": np.bincount(np.minimum(lengths, max_seq_length) // 16,
                                        minlength=max_seq_length // 16 + 1).tolist(),
    }
    if masked is not None:
        input_ids, positions, position_offsets, originals = masked
        rows = np.repeat(np.arange(lengths.size), np.diff(position_offsets))
        replaced = input_ids[examples.offsets[rows] + positions]
        stats.update({
            "num_masked": int(positions.size),
            "num_maskable": int((~is_special[examples.input_ids]).sum()),
            "mask_token": int((replaced == MASK_ID).sum()),
            "unchanged": int((replaced == originals).sum()),
            "random_token": int(((replaced != originals) & (replaced != MASK_ID)).sum()),
            "special_tokens_masked": int(is_special[originals].sum()),
        })
    return stats


def quality_from_statistics(stats: Iterable[dict[str, Any]], max_seq_length: int) -> dict[str, Any]:
    """Sum unit statistics into the figures the quality gates check and the manifest records."""
    stats = list(stats)
    total = {k: sum(s[k] for s in stats if s.get(k) is not None) for k in stats[0]
             if k not in ("length_histogram", "max_length", "split", "unit")}
    n = max(1, total["num_examples"])
    histogram = np.sum([s["length_histogram"] for s in stats], axis=0)
    quality: dict[str, Any] = {
        "num_examples": total["num_examples"],
        "nsp_random_next_share": total["label_sum"] / n if stats[0]["label_sum"] is not None else None,
        "mean_length": total["num_tokens"] / n,
        "max_length": max(s["max_length"] for s in stats),
        "unk_rate": total["unk"] / max(1, total["num_tokens"]),
        "length_histogram": [[f"{16 * b}-{min(16 * b + 15, max_seq_length)}", int(c)] for b, c in enumerate(histogram)],
    }
    if "num_masked" in total:
        masked = max(1, total["num_masked"])
        quality.update({
            "num_masked": total["num_masked"],
            "num_maskable": total["num_maskable"],
            "masked_share_of_maskable": total["num_masked"] / max(1, total["num_maskable"]),
            "mask_token_share": total["mask_token"] / masked,
            "unchanged_share": total["unchanged"] / masked,
            "random_token_share": total["random_token"] / masked,
            "special_tokens_masked": total["special_tokens_masked"],
        })
    return quality


def unit_table(examples: UnitExamples, masked: tuple | None, schema: pa.Schema) -> pa.Table:
    """The unit's examples (already in key order) as a table in the shard schema plus `shuffle_key`."""
    types = {f.name: f.type for f in schema}
    ids = masked[0] if masked is not None else examples.input_ids
    columns = {
        "input_ids": list_array(examples.offsets, ids, types["input_ids"].value_type),
        "token_type_ids": list_array(examples.offsets, examples.token_type_ids, pa.uint8()),
        "length": arrow_array(np.diff(examples.offsets), types["length"]),
    }
    if "next_sentence_label" in types:
        columns["next_sentence_label"] = arrow_array(examples.labels, pa.int8())
    if masked is not None:
        _, positions, position_offsets, labels = masked
        columns["masked_lm_positions"] = list_array(position_offsets, positions, types["masked_lm_positions"].value_type)
        columns["masked_lm_labels"] = list_array(position_offsets, labels, types["masked_lm_labels"].value_type)
    return pa.table({**{name: columns[name] for name in schema.names}, "shuffle_key": arrow_array(examples.keys, pa.uint64())})


def split_schema(config: ExamplesConfig, vocab_size: int, static: bool) -> pa.Schema:
    columns = {"input_ids", "token_type_ids", "length"}
    if config.pair_objective != "none":
        columns.add("next_sentence_label")
    if static:
        columns |= {"masked_lm_positions", "masked_lm_labels"}
    return shard_schema(vocab_size, config.max_seq_length, columns)


@with_system_memory_pool
def generate_unit(spec: dict[str, Any]) -> dict[str, Any]:
    """Generate one unit into its part file (skipped when already there); return its statistics.

    `spec` is plain data (see `plan_examples`), so that any process or machine that sees the token store and the
    parts directory can run it: a process pool, a Prefect task, a Dask worker.
    """
    parts = Path(spec["parts_dir"])
    name = f"{spec['split']}-{spec['index']:06d}"
    done = parts / f"{name}.json"
    if done.is_file():
        return stage.read_json(done)
    config = stage.config_from_dict(ExamplesConfig, spec["config"])
    store = TokenStore(spec["tokens_path"])
    unit = Unit(spec["split"], spec["index"], spec["start"], spec["stop"], spec["tokens"])
    is_special, is_continuation = _vocab_flags(str(parts / "vocab_flags.npz"))
    seed = [config.seed, _split_index(unit.split), unit.index]
    examples = unit_examples(store, unit, config, keys_rng=np.random.default_rng([*seed, 1]))
    store.release()
    masked = None
    if spec["static"] and examples.offsets.size > 1:
        masked = mask_flat(examples.input_ids, examples.offsets, config=config.mlm, rng=np.random.default_rng(seed),
                           mask_token_id=MASK_ID, vocab_size=is_special.size, num_special_tokens=NUM_SPECIAL,
                           is_special=is_special, is_continuation=is_continuation)
    table = unit_table(examples, masked, split_schema(config, is_special.size, spec["static"]))
    stats = unit_statistics(examples, masked, is_special, config.max_seq_length)
    stats["split"], stats["unit"] = unit.split, unit.index
    write_table_file(parts / f"{name}.arrow", table)
    stage.write_json(done, stats)
    return stats


def _allow_open_files(needed: int) -> None:
    """Raise the open-file limit (each memory-mapped part file holds a descriptor) or say what to change."""
    import resource

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
        sources.append((store, store.table.column("shuffle_key").to_numpy()))
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
            writer.add(rows.take(pc.sort_indices(rows, [("shuffle_key", "ascending")])))
        for store, _ in sources:
            store.release()
    return writer.finish(vocab_size=vocab_size, metadata=metadata)


def examples_key(config: ExamplesConfig, documents_dir: str | Path) -> str:
    from bert_core.tokens import tokens_key

    return stage.hash_json({"config": config, "tokens": tokens_key(config.tokenizer, documents_dir), "version": 3})


def parts_dir_for(output_dir: Path, key: str) -> Path:
    return output_dir.with_name(output_dir.name + "-parts") / key[:16]


@with_system_memory_pool
def plan_examples(config: ExamplesConfig, documents_dir: str | Path, output_dir: str | Path,
                  tokens_dir: str | Path | None = None) -> dict[str, Any]:
    """Tokenize (once, reused) and cut every split into units; returns the plan the other steps take.

    The plan is plain data: `key`, `tokens_dir`, `parts_dir`, `splits` (name -> documents, static) and `units`
    (the specs `generate_unit` runs). An up-to-date output gives `up_to_date: True` and no units.
    """
    from bert_core.tokenizer import continuation_mask, load_backend
    from bert_core.tokens import tokenize_corpus

    documents_dir, output_dir = Path(documents_dir), Path(output_dir)
    tokens_dir = Path(tokens_dir) if tokens_dir else output_dir.with_name("tokens")
    stage.remove_stale_temporaries(output_dir)  # a killed run's half-written shard set
    key = examples_key(config, documents_dir)
    plan: dict[str, Any] = {"key": key, "output_dir": str(output_dir), "tokens_dir": str(tokens_dir),
                            "config": stage.to_jsonable(config), "units": [], "splits": {}}
    if stage.completed_stage(output_dir, key):
        try:
            for split in ("train", "validation"):
                verify_shards(output_dir / split)
            return {**plan, "up_to_date": True}
        except (OSError, ValueError) as error:  # a shard was removed or altered since: build the output again
            logger.warning("examples: %s is not intact (%s); generating it again", output_dir, error)
    tokenize_corpus(config.tokenizer, documents_dir, tokens_dir)
    tokenizer = load_backend(tokens_dir / "tokenizer")
    parts = parts_dir_for(output_dir, key)
    parts.mkdir(parents=True, exist_ok=True)
    is_special = np.zeros(tokenizer.get_vocab_size(), dtype=bool)
    is_special[:NUM_SPECIAL] = True
    if [tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] != list(range(NUM_SPECIAL)):
        raise ValueError(f"{tokens_dir / 'tokenizer'}: special tokens must have ids [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 "
                         "[MASK]=4 (bertflow's trained tokenizers do)")
    flags = parts / "vocab_flags.npz"
    if not flags.is_file():
        with stage.atomic_file(flags) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, is_special=is_special, is_continuation=continuation_mask(tokenizer))
    for split in ("train", "validation"):
        path = tokens_dir / f"tokens-{split}.arrow"
        store = TokenStore(path)
        minimum = 1 if config.pair_objective == "none" else 2
        if len(store) < minimum:
            shutil.rmtree(parts, ignore_errors=True)
            raise ValueError(f"examples: the {split} split has {len(store)} usable documents; "
                             f"{config.pair_objective.upper()} needs {minimum}+")
        # Held-out evaluation always uses fixed (static) masks so that every model is scored on the same task.
        static = config.masking == "static" or split == "validation"
        plan["splits"][split] = {"documents": len(store), "static": static}
        for unit in plan_units(store, split, config.unit_tokens):
            plan["units"].append({"split": split, "index": unit.index, "start": unit.start, "stop": unit.stop,
                                  "tokens": unit.tokens, "static": static, "tokens_path": str(path),
                                  "parts_dir": str(parts), "config": plan["config"]})
    plan["parts_dir"] = str(parts)
    plan["up_to_date"] = False
    return plan


@with_system_memory_pool
def finish_examples(plan: dict[str, Any], stats: list[dict[str, Any]]) -> Path:
    """Check quality, merge every split's parts into shards, write the stage record; remove the parts."""
    from bert_core.tokenizer import load_backend, save_tokenizer, tokenizer_hash

    output_dir = Path(plan["output_dir"])
    if plan.get("up_to_date"):
        return output_dir
    config = stage.config_from_dict(ExamplesConfig, plan["config"])
    tokens_dir, parts = Path(plan["tokens_dir"]), Path(plan["parts_dir"])
    tokenizer = load_backend(tokens_dir / "tokenizer")
    vocab_size = tokenizer.get_vocab_size()
    inputs = stage.hash_file(tokens_dir / "manifest.json")
    by_split: dict[str, list[tuple[dict, dict]]] = {}
    for spec, stat in zip(plan["units"], stats):
        by_split.setdefault(spec["split"], []).append((spec, stat))
    with stage.atomic_directory(output_dir) as tmp:
        save_tokenizer(tokenizer, tmp / "tokenizer")
        outputs = {}
        for split, info in plan["splits"].items():
            units = by_split[split]
            quality = quality_from_statistics([s for _, s in units], config.max_seq_length)
            failures = check_quality(quality, config)
            if failures and config.quality_gates:
                raise ValueError(f"examples: the {split} split fails its quality gates: " + "; ".join(failures)
                                 + " (set quality_gates=false to write it anyway)")
            manifest = merge_units(
                [parts / f"{split}-{spec['index']:06d}.arrow" for spec, _ in units],
                quality["num_examples"], tmp / split,
                schema=split_schema(config, vocab_size, info["static"]),
                examples_per_shard=config.examples_per_shard, vocab_size=vocab_size,
                metadata={
                    "split": split,
                    "masking": "static" if info["static"] else "dynamic",
                    "pair_objective": config.pair_objective,
                    "max_seq_length": config.max_seq_length,
                    "tokenizer_hash": tokenizer_hash(tokenizer),
                    "documents": info["documents"],
                    "units": len(units),
                    "input_hash": inputs,
                    "quality": quality,
                    "config": stage.to_jsonable(config),
                },
            )
            outputs[split] = {k: manifest[k] for k in ("num_examples", "num_tokens", "num_shards", "quality")}
            outputs[split]["quality_failures"] = failures
        stage.write_stage_record(tmp, key=plan["key"], stage="examples", config=config, outputs=outputs)
    shutil.rmtree(parts, ignore_errors=True)
    with contextlib.suppress(OSError):
        parts.parent.rmdir()  # only when no other run's parts are there
    logger.info("examples: %s", {s: {k: v for k, v in o.items() if k != "quality"} for s, o in outputs.items()})
    return output_dir


def end_with_parent(parent_pid: int, poll_seconds: float = 0.5) -> None:
    """Pool-worker initializer: exit within `poll_seconds` once the process that started the pool is gone.

    A worker of a killed (kill -9) stage otherwise waits on its task queue for a minute or more, keeping the
    forkserver and resource tracker alive with it. The parent is named by pid because a forkserver's workers are
    children of the forkserver, not of the stage.
    """
    import threading

    def watch() -> None:
        while stage.pid_alive(parent_pid):
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def run_units(specs: list[dict[str, Any]], workers: int = 1) -> list[dict[str, Any]]:
    """`generate_unit` over specs, in this process or a pool of `workers` processes; statistics in spec order."""
    if workers <= 1 or len(specs) <= 1:
        return [generate_unit(spec) for spec in specs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["bert_core.examples"])
    with ProcessPoolExecutor(max_workers=min(workers, len(specs)), mp_context=context,
                             initializer=end_with_parent, initargs=(os.getpid(),)) as pool:
        # Largest units first so that a long one does not start last; results are put back in spec order.
        order = sorted(range(len(specs)), key=lambda i: -specs[i]["tokens"])
        results = dict(zip(order, pool.map(generate_unit, [specs[i] for i in order])))
    return [results[i] for i in range(len(specs))]


def generate_examples(config: ExamplesConfig, documents_dir: str | Path, output_dir: str | Path,
                      *, tokens_dir: str | Path | None = None, workers: int = 1) -> Path:
    """Run the stage: `output_dir/{tokenizer,train,validation}` with shards and manifests. Skips if up to date.

    The tokenized corpus goes to `tokens_dir` (default: a `tokens` directory beside `output_dir`) and is reused by
    every run on the same documents and tokenizer settings, e.g. a second phase at max_seq_length 512. `workers`
    processes generate units in parallel; the shards are the same bytes for any number of workers.
    """
    started = time.perf_counter()
    plan = plan_examples(config, documents_dir, output_dir, tokens_dir)
    if plan["up_to_date"]:
        logger.info("examples: %s is up to date, skipping", output_dir)
        return Path(output_dir)
    planned = time.perf_counter()
    stats = run_units(plan["units"], workers)
    generated = time.perf_counter()
    path = finish_examples(plan, stats)
    logger.info("examples: tokenize + plan %.1f s, %d units on %d worker(s) %.1f s, merge %.1f s",
                planned - started, len(plan["units"]), workers, generated - planned, time.perf_counter() - generated)
    return path


def check_quality(quality: dict[str, Any], config: ExamplesConfig) -> list[str]:
    """The quality gates a split must pass; returns the failures (empty when it passes).

    Shares must lie within the stated tolerance of their target, widened to 4 standard errors on small splits
    (a 70-example validation split cannot show a 50% +- 2 pair balance even when generated correctly).
    """
    def tolerance(stated: float, p: float, n: int) -> float:
        return max(stated, 4 * math.sqrt(p * (1 - p) / max(1, n)))

    failures = []
    if quality["max_length"] > config.max_seq_length:
        failures.append(f"an example has {quality['max_length']} tokens > max_seq_length {config.max_seq_length}")
    share, n = quality["nsp_random_next_share"], quality["num_examples"]
    if share is not None and abs(share - 0.5) > tolerance(0.02, 0.5, n):
        failures.append(f"{config.pair_objective} label share {share:.3f} is not 0.5 +- {tolerance(0.02, 0.5, n):.3f}")
    if "num_masked" in quality:
        mlm = config.mlm
        if quality["special_tokens_masked"]:
            failures.append(f"{quality['special_tokens_masked']} special tokens were masked")
        rate = quality["masked_share_of_maskable"]
        tol = tolerance(0.005, mlm.mlm_probability, quality["num_maskable"])
        if abs(rate - mlm.mlm_probability) > tol:
            failures.append(f"masked share {rate:.4f} is not {mlm.mlm_probability} +- {tol:.4f}")
        keep = 1 - mlm.mask_replace_prob - mlm.random_replace_prob
        for name, target in (("mask_token_share", mlm.mask_replace_prob), ("random_token_share", mlm.random_replace_prob),
                             ("unchanged_share", keep)):
            tol = tolerance(0.02, target, quality["num_masked"])
            # A random replacement can draw the original token (1 / vocab): it then counts as unchanged.
            if abs(quality[name] - target) > tol + 1e-3:
                failures.append(f"{name} {quality[name]:.3f} is not {target} +- {tol:.3f}")
    return failures


def describe_examples(shards_dir: str | Path, n: int = 3) -> str:
    """Human-readable view of the first `n` examples of a split: tokens, masks with their targets, the pair label.

    `shards_dir` is a split directory (`<examples>/train`) or an examples directory (its train split is shown).
    """
    from bert_core.data import ShardDataset
    from bert_core.shards import read_manifest
    from bert_core.tokenizer import load_tokenizer

    shards_dir = Path(shards_dir)
    if (shards_dir / "train").is_dir():
        shards_dir = shards_dir / "train"
    tokenizer = load_tokenizer(shards_dir.parent / "tokenizer")
    manifest = read_manifest(shards_dir)
    dataset = ShardDataset(shards_dir)
    objective = manifest.get("config", {}).get("pair_objective", "nsp")
    label_names = {"nsp": ("actual next", "random next"), "sop": ("in order", "swapped")}.get(objective)
    lines = [f"{shards_dir}: {manifest['num_examples']:,} examples in {manifest['num_shards']} shard(s), "
             f"{manifest['num_tokens']:,} tokens, masking {manifest['masking']}, objective {objective}"]
    for index in range(min(n, len(dataset))):
        item = dataset[index]
        tokens = tokenizer.convert_ids_to_tokens([int(t) for t in item["input_ids"]])
        targets = {}
        if "masked_lm_positions" in item:
            originals = tokenizer.convert_ids_to_tokens([int(t) for t in item["masked_lm_labels"]])
            targets = dict(zip((int(p) for p in item["masked_lm_positions"]), originals))
        shown = [f"{tok}<{targets[i]}>" if i in targets else tok for i, tok in enumerate(tokens)]
        label = (f"label {int(item['next_sentence_label'])} ({label_names[int(item['next_sentence_label'])]})"
                 if label_names else "no pair label")
        lines += ["", f"example {index}: {len(tokens)} tokens, {label}, {len(targets)} MLM targets", " ".join(shown)]
    return "\n".join(lines)
