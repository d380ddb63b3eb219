"""The example-generation stage: WordPiece tokenizer + sentence pairs + MLM masks -> equal-size Arrow shards.

Pairs are built by `bert_core.examples.pairs` (google-research/bert's algorithm, SOP, full sentences); their quality
figures and gates are `bert_core.examples.quality`'s; the merge into shards is `bert_core.examples.shards.merge_units`.

How it runs, so that memory stays flat and the output does not depend on the number of workers:
1. The corpus is tokenized once into a memory-mapped token store (`bert_core.examples.token_store`).
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
import random
import shutil
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from bert_core import stage
from bert_core.config import SEED, Fraction, PositiveInt, SeqLength, check_fields
from bert_core.examples.masking import MaskingConfig, mask_flat
from bert_core.examples.pairs import (MASK_ID, NUM_SPECIAL, UnitExamples, assemble, document_pairs,
    full_sentence_segments, ranges)
from bert_core.examples.quality import check_quality, quality_from_statistics, unit_statistics
from bert_core.examples.shards import (arrow_array, list_array, merge_units, shard_schema, verify_shards,
    with_system_memory_pool, write_table_file)
from bert_core.examples.token_store import TokenStore, tokenize_corpus, tokens_key
from bert_core.examples.tokenizer import TokenizerConfig, continuation_mask, load_backend, save_tokenizer

logger = logging.getLogger(__name__)

PAIR_OBJECTIVES = ("nsp", "sop", "none")
_KEY_SPACE = 1 << 64


@dataclass(frozen=True, kw_only=True)
class ExamplesConfig:
    max_seq_length: SeqLength = 128  # tokens per example, [CLS] and [SEP]s included
    short_seq_prob: Fraction = 0.1  # share of examples cut shorter at random (BERT's short_seq_prob)
    # "nsp": B is the actual next segment or a random one; "sop": A and B swapped or not; "none": full sentences
    pair_objective: Literal[PAIR_OBJECTIVES] = "nsp"
    dupe_factor: PositiveInt = 1  # passes over the corpus, each with other pairs and masks
    masking: Literal["static", "dynamic"] = "static"  # "static": masks in the shards; "dynamic": stored unmasked, masked per batch
    examples_per_shard: PositiveInt = 8192  # examples per Arrow shard
    seed: int = SEED
    # Documents per unit of work, in tokens. Part of the output's identity (units seed their own random streams),
    # unlike the number of workers, which never changes the output.
    unit_tokens: PositiveInt = 1 << 18
    quality_gates: bool = True  # fail the stage when the examples are not what BERT expects (see check_quality)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    mlm: MaskingConfig = field(default_factory=MaskingConfig)

    def __post_init__(self):
        check_fields(self)


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
        moved = ranges(first[order], per_example[order])
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


def examples_key(config: ExamplesConfig, documents_dir: str | Path) -> str:
    return stage.hash_json({"config": config, "tokens": tokens_key(config.tokenizer, documents_dir), "version": 3})


def examples_up_to_date(config: ExamplesConfig, documents_dir: str | Path, output_dir: str | Path) -> bool:
    """Whether `output_dir` holds this config's finished, intact shards (then the stage, tokenizing included, is
    skipped)."""
    if not stage.completed_stage(output_dir, examples_key(config, documents_dir)):
        return False
    try:
        for split in ("train", "validation"):
            verify_shards(Path(output_dir) / split)
        return True
    except (OSError, ValueError) as error:  # a shard was removed or altered since: build the output again
        logger.warning("examples: %s is not intact (%s); generating it again", output_dir, error)
        return False


def parts_dir_for(output_dir: Path, key: str) -> Path:
    return output_dir.with_name(output_dir.name + "-parts") / key[:16]


@with_system_memory_pool
def plan_examples(config: ExamplesConfig, documents_dir: str | Path, output_dir: str | Path,
                  tokens_dir: str | Path | None = None, executor: Executor | None = None) -> dict[str, Any]:
    """Tokenize (once, reused; its units on `executor` when given) and cut every split into units; returns the
    plan the other steps take.

    The plan is plain data: `key`, `tokens_dir`, `parts_dir`, `splits` (name -> documents, static) and `units`
    (the specs `generate_unit` runs). An up-to-date output gives `up_to_date: True` and no units.
    """
    documents_dir, output_dir = Path(documents_dir), Path(output_dir)
    tokens_dir = Path(tokens_dir) if tokens_dir else output_dir.with_name("tokens")
    stage.remove_stale_temporaries(output_dir)  # a killed run's half-written shard set
    key = examples_key(config, documents_dir)
    plan: dict[str, Any] = {"key": key, "output_dir": str(output_dir), "tokens_dir": str(tokens_dir),
                            "documents_dir": str(documents_dir), "config": stage.to_jsonable(config), "units": [],
                            "splits": {}}
    if examples_up_to_date(config, documents_dir, output_dir):
        return {**plan, "up_to_date": True}
    tokenize_corpus(config.tokenizer, documents_dir, tokens_dir, executor)
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
    output_dir = Path(plan["output_dir"])
    if plan.get("up_to_date"):
        return output_dir
    config = stage.config_from_dict(ExamplesConfig, plan["config"])
    tokens_dir, parts = Path(plan["tokens_dir"]), Path(plan["parts_dir"])
    tokenizer = load_backend(tokens_dir / "tokenizer")
    vocab_size = tokenizer.get_vocab_size()
    inputs = stage.hash_file(tokens_dir / "manifest.json")
    # The token store's manifest has its tokenizer's hash (the store's tokenizer is the one saved here): hashing the
    # vocabulary again, once per split, was a tenth of a second of the stage's serial part.
    token_hash = stage.read_json(tokens_dir / "manifest.json")["tokenizer_hash"]
    by_split: dict[str, list[tuple[dict, dict]]] = {}
    for spec, stat in zip(plan["units"], stats):
        by_split.setdefault(spec["split"], []).append((spec, stat))
    with stage.atomic_directory(output_dir) as tmp:
        save_tokenizer(tokenizer, tmp / "tokenizer")
        outputs: dict[str, Any] = {}
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
                    "tokenizer_hash": token_hash,
                    "documents": info["documents"],
                    "units": len(units),
                    "input_hash": inputs,
                    "quality": quality,
                    "config": stage.to_jsonable(config),
                },
            )
            outputs[split] = {k: manifest[k] for k in ("num_examples", "num_tokens", "num_shards", "quality")}
            outputs[split]["quality_failures"] = failures
        # The record names the corpus the shards were made of: registration reads an encoder's lineage from it.
        stage.write_stage_record(tmp, key=plan["key"], stage="examples", config=config,
                                 outputs={**outputs, "documents_dir": plan["documents_dir"]})
    shutil.rmtree(parts, ignore_errors=True)
    with contextlib.suppress(OSError):
        parts.parent.rmdir()  # only when no other run's parts are there
    logger.info("examples: %s", {s: {k: v for k, v in o.items() if k != "quality"} for s, o in outputs.items()})
    return output_dir


def generate_examples(config: ExamplesConfig, documents_dir: str | Path, output_dir: str | Path,
                      *, tokens_dir: str | Path | None = None, workers: int = 1,
                      executor: Executor | None = None) -> Path:
    """Run the stage: `output_dir/{tokenizer,train,validation}` with shards and manifests. Skips if up to date.

    The tokenized corpus goes to `tokens_dir` (default: a `tokens` directory beside `output_dir`) and is reused by
    every run on the same documents and tokenizer settings, e.g. a second phase at max_seq_length 512. Tokenizing
    and generation units run on `executor` (any `concurrent.futures` executor: a Dask client's `get_executor()`),
    else on a pool of `workers` single-threaded processes, else here; the shards are the same bytes either way.
    """
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        executor = executor or stack.enter_context(stage.worker_pool(workers, preload=["bert_core.examples.generation"]))
        plan = plan_examples(config, documents_dir, output_dir, tokens_dir, executor)
        if plan["up_to_date"]:
            logger.info("examples: %s is up to date, skipping", output_dir)
            return Path(output_dir)
        planned = time.perf_counter()
        stats = stage.map_units(generate_unit, plan["units"], executor, cost=lambda unit: unit["tokens"])
        generated = time.perf_counter()
    path = finish_examples(plan, stats)
    logger.info("examples: tokenize + plan %.1f s, %d units on %d worker(s) %.1f s, merge %.1f s",
                planned - started, len(plan["units"]), workers, generated - planned, time.perf_counter() - generated)
    return path
