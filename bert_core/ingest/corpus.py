"""The ingest stage: corpus sources -> cleaned, deduplicated, decontaminated, sentence-split document shards.

It runs in two steps so that input files can be processed in parallel and a crashed or extended run redoes only
what changed:
1. `process_input` (one call per file or `hf:` dataset, independent, safe to run on many workers): read, clean,
   split sentences, and compute each document's exact-content hash, MinHash signature and evaluation-set overlap.
   The result is a part file under `<output_dir>-parts/`, keyed by the input's content and the config; an
   existing part with the same key is reused.
2. `merge_parts` (corpus order): drop contaminated documents, then exact and near duplicates across the whole
   corpus (`bert_core.ingest.dedup.reject_documents`; near dedup on disk, its units on any workers), split
   train/validation deterministically by document id, and write `documents-{train,validation}-NNNNN.parquet` plus
   `manifest.json`. Memory holds one part at a time, the exact-duplicate hashes seen and a byte per document.
Every document read is accounted for: read = kept + rejected, by reason, per source.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bert_core import stage
from bert_core.config import SEED, ConfigError, OpenFraction, PositiveInt, check_fields
from bert_core.ingest.cleaning import (REJECT_CONTAMINATED, REJECT_DUPLICATE, REJECT_NEAR_DUPLICATE, CleaningConfig,
    clean_document)
from bert_core.ingest.decontamination import ContaminationIndex, read_eval_texts
from bert_core.ingest.dedup import (CONTAMINATED, DUPLICATE, KEPT, NEAR_DUPLICATE, DedupConfig, content_hash,
    minhash_signature, normalized_words, reject_documents, word_hashes)
from bert_core.ingest.sources import SAMPLE_SOURCES, ReadConfig, input_units, read_unit, task_source
from bert_core.ingest.textfiles import column_spec, display_path, local_unit, portable_unit

logger = logging.getLogger(__name__)

PART_SCHEMA_VERSION = 4  # 2: records carry problems, encodings and long words removed; 3: C1 controls repaired;
# 4: template residue removed (cleaning changed without a setting of its own)
_PART_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("source", pa.string()), ("sentences", pa.list_(pa.string())),
    ("characters", pa.int64()), ("content_hash", pa.string()), ("signature", pa.binary()),
    ("contamination", pa.int32()),
])
DOCUMENT_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("sentences", pa.list_(pa.string()))])


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    sources: tuple[str, ...] = SAMPLE_SOURCES
    read: ReadConfig = field(default_factory=ReadConfig)
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    # Downstream evaluation texts to keep out of the pretraining corpus: "path" (column "sentence"/"text") or
    # "path::column1,column2" for TSV/CSV/JSONL/Parquet files.
    decontamination_files: tuple[str, ...] = ()
    validation_fraction: OpenFraction = 0.05  # share of the documents held out for validation
    seed: int = SEED  # decides which documents are held out for validation
    documents_per_shard: PositiveInt = 10_000  # documents per output Parquet file

    def __post_init__(self):
        check_fields(self)
        if not self.sources:
            raise ConfigError("IngestConfig.sources is empty; expected at least one file, directory, glob or hf: name")



def parts_dir_for(output_dir: str | Path) -> Path:
    output_dir = Path(output_dir)
    return output_dir.with_name(f"{output_dir.name}-parts")


def _decontamination_digest(config: IngestConfig) -> str:
    files = [column_spec(spec)[0] for spec in config.decontamination_files]
    return stage.hash_json([config.decontamination_files, stage.hash_files(files) if files else ""])


_contamination_cache: dict[str, ContaminationIndex] = {}


def contamination_index(config: IngestConfig) -> ContaminationIndex | None:
    """The n-gram index of the evaluation texts (built once per process)."""
    if not config.decontamination_files:
        return None
    key = stage.hash_json([_decontamination_digest(config), config.dedup])
    if key not in _contamination_cache:
        texts = [t for spec in config.decontamination_files for t in read_eval_texts(spec)]
        _contamination_cache[key] = ContaminationIndex(texts, config.dedup)
    return _contamination_cache[key]


def part_key(unit: str, config: IngestConfig) -> str:
    unit = local_unit(unit)
    content = unit if unit.startswith("hf:") else stage.hash_file(task_source(unit)[0])
    return stage.hash_json({"unit": Path(unit).name if not unit.startswith("hf:") else unit, "content": content,
                            "read": config.read, "cleaning": config.cleaning, "dedup": config.dedup,
                            "decontamination": _decontamination_digest(config), "version": PART_SCHEMA_VERSION})


def process_input(unit: str, config: IngestConfig, parts_dir: str | Path) -> dict[str, Any]:
    """Read and clean one input unit into a part file; reuse an existing part with the same key. Return its record."""
    parts_dir = Path(parts_dir)
    unit = local_unit(unit)  # a portable name (flows, Dask) opens as the real path
    key = part_key(unit, config)
    record_path = parts_dir / f"part-{key[:20]}.json"
    if record_path.is_file():
        return stage.read_json(record_path)
    parts_dir.mkdir(parents=True, exist_ok=True)
    contamination = contamination_index(config)
    rejected: Counter = Counter()
    encodings: Counter = Counter()
    problems: dict[str, dict[str, Any]] = {}  # reason -> {"count", "example"}: what went wrong in this file
    read = kept = sentences = characters = long_words = c1_repaired = residue = 0
    part_path = parts_dir / f"part-{key[:20]}.parquet"
    columns: dict[str, list] = {name: [] for name in _PART_SCHEMA.names}
    # The writer closes before the temporary replaces the part (contexts exit in reverse order).
    with stage.atomic_file(part_path) as tmp, pq.ParquetWriter(tmp, _PART_SCHEMA) as writer:
        for doc in read_unit(unit, config.read):
            read += 1
            if doc.encoding:
                encodings[doc.encoding] += 1
            if doc.error or doc.note:
                problem = problems.setdefault(doc.error or doc.note, {"count": 0, "example": doc.detail})
                problem["count"] += 1
                if problem["count"] <= 3:
                    logger.warning("%s: %s", doc.error or doc.note, doc.detail)
            clean, reason = clean_document(doc, config.cleaning)
            if clean is None:
                rejected[reason] += 1
                continue
            long_words += clean.long_words_removed
            c1_repaired += clean.c1_controls_repaired
            residue += clean.template_lines_removed
            if config.dedup.exact or config.dedup.near or contamination:
                words = normalized_words(" ".join(clean.sentences))
                hashes = word_hashes(words)
            columns["doc_id"].append(clean.id)
            columns["source"].append(clean.source)
            columns["sentences"].append(list(clean.sentences))
            columns["characters"].append(sum(len(s) for s in clean.sentences))
            columns["content_hash"].append(content_hash(words) if config.dedup.exact else "")
            columns["signature"].append(minhash_signature(hashes, config.dedup).tobytes() if config.dedup.near else b"")
            columns["contamination"].append(contamination.overlaps(hashes) if contamination else 0)
            kept += 1
            sentences += len(clean.sentences)
            characters += columns["characters"][-1]
            if len(columns["doc_id"]) >= 256:
                writer.write_table(pa.table(columns, schema=_PART_SCHEMA))
                columns = {name: [] for name in _PART_SCHEMA.names}
        if columns["doc_id"]:
            writer.write_table(pa.table(columns, schema=_PART_SCHEMA))
    record = {"unit": portable_unit(unit), "key": key, "part": part_path.name, "read": read, "cleaned": kept,
              "rejected": dict(rejected), "sentences": sentences, "characters": characters,
              "encodings": dict(encodings), "long_words_removed": long_words,
              "c1_controls_repaired": c1_repaired, "template_lines_removed": residue,
              "problems": [{"path": display_path(unit), "problem": reason, **p} for reason, p in sorted(problems.items())]}
    stage.write_json(record_path, record)
    return record


def _split_point(doc_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by the document id and seed: documents below validation_fraction are held out."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class _ShardWriter:
    """Appends Arrow tables of documents to `documents-{split}-NNNNN.parquet`, `per_shard` documents a file."""

    def __init__(self, directory: Path, split: str, documents_per_shard: int):
        self.directory, self.split, self.per_shard = directory, split, documents_per_shard
        self.index = self.in_shard = self.total = 0
        self.writer: pq.ParquetWriter | None = None

    def add(self, table: pa.Table) -> None:
        while table.num_rows:
            if self.writer is None:
                # No dictionary for the text columns: sentences are nearly all unique.
                self.writer = pq.ParquetWriter(self.directory / f"documents-{self.split}-{self.index:05d}.parquet",
                                               DOCUMENT_SCHEMA, use_dictionary=["source"])
            take = min(table.num_rows, self.per_shard - self.in_shard)
            self.writer.write_table(table.slice(0, take))
            table = table.slice(take)
            self.in_shard += take
            self.total += take
            if self.in_shard >= self.per_shard:
                self.close()
                self.writer, self.in_shard = None, 0
                self.index += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def merge_parts(records: list[dict[str, Any]], config: IngestConfig, parts_dir: str | Path,
                output_dir: str | Path, *, key: str, executor=None) -> Path:
    """Corpus-wide decontamination, dedup and split over finished parts; write the document shards + manifest."""
    parts_dir, output_dir = Path(parts_dir), Path(output_dir)
    rejected: Counter = Counter()
    encodings: Counter = Counter()
    per_source: dict[str, Counter] = {}
    decisions: list[np.ndarray] = []  # per part: 0 reject, 1 train, 2 validation
    points: list[np.ndarray] = []
    near_dir = parts_dir / f"dedup-{key[:16]}"
    codes = reject_documents([parts_dir / r["part"] for r in records], config.dedup, near_dir, executor)
    reasons = {CONTAMINATED: REJECT_CONTAMINATED, DUPLICATE: REJECT_DUPLICATE, NEAR_DUPLICATE: REJECT_NEAR_DUPLICATE}
    for record, code in zip(records, codes):
        source = display_path(_source_of(local_unit(record["unit"]), config.sources))
        counts = per_source.setdefault(source, Counter())
        counts["read"] += record["read"]
        encodings.update(record.get("encodings", {}))
        for reason, n in record["rejected"].items():
            rejected[reason] += n
            counts[f"rejected_{reason}"] += n
        for value, reason in reasons.items():
            if n := int((code == value).sum()):
                rejected[reason] += n
                counts[f"rejected_{reason}"] += n
        ids = pq.read_table(parts_dir / record["part"], columns=["doc_id"]).column("doc_id").to_pylist()
        point = np.array([_split_point(doc_id, config.seed) if c == KEPT else 0.0 for doc_id, c in zip(ids, code)])
        decision = np.where(code == KEPT, np.where(point < config.validation_fraction, 2, 1), 0).astype(np.int8)
        counts["kept"] += int((code == KEPT).sum())
        decisions.append(decision)
        points.append(point)
    shutil.rmtree(near_dir, ignore_errors=True)

    read = sum(r["read"] for r in records)
    kept = int(sum((d > 0).sum() for d in decisions))
    if kept == 0:
        raise ValueError(f"ingest: no document survived cleaning ({read} read, rejected: {dict(rejected)})")
    rebalanced = _ensure_both_splits(decisions, points) if config.validation_fraction > 0 else False
    per_split = {"train": int(sum((d == 1).sum() for d in decisions)),
                 "validation": int(sum((d == 2).sum() for d in decisions))}
    if not per_split["train"] or not per_split["validation"]:
        raise ValueError(f"ingest: {kept} document(s) kept; at least 2 are needed for a train and a validation split")
    assert read == kept + sum(rejected.values()), "every document read must be kept or rejected"

    sentences = characters = 0
    lengths: list[int] = []
    with stage.atomic_directory(output_dir) as tmp:
        writers = {1: _ShardWriter(tmp, "train", config.documents_per_shard),
                   2: _ShardWriter(tmp, "validation", config.documents_per_shard)}
        for record, decision in zip(records, decisions):
            if not (decision > 0).any():
                continue
            row = 0
            # Arrow all the way (filter, slice, write): no Python strings, so memory stays flat as the corpus grows.
            for batch in pq.ParquetFile(parts_dir / record["part"]).iter_batches(
                    batch_size=512, columns=["doc_id", "source", "sentences", "characters"]):
                mask = decision[row : row + batch.num_rows]
                row += batch.num_rows
                kept_rows = pa.Table.from_batches([batch]).filter(pa.array(mask > 0))
                sentences += int(pc.sum(pc.list_value_length(kept_rows.column("sentences"))).as_py() or 0)
                lengths.extend(kept_rows.column("characters").to_pylist())
                for code, writer in writers.items():
                    chosen = pa.Table.from_batches([batch]).filter(pa.array(mask == code))
                    if chosen.num_rows:
                        writer.add(chosen.select(DOCUMENT_SCHEMA.names).cast(DOCUMENT_SCHEMA))
        characters = int(sum(lengths))
        for writer in writers.values():
            writer.close()
        manifest = {
            "documents_read": read,
            "documents_kept": kept,
            "documents_rejected": dict(sorted(rejected.items())),
            "per_source": {s: dict(c) for s, c in per_source.items()},
            # Files that could not be read whole, or had bad records or repairs, by path: each problem with its
            # count and one example (file, line and error).
            "problem_files": [p for r in records for p in r.get("problems", [])],
            "documents_per_encoding": dict(sorted(encodings.items())),
            "long_words_removed": sum(r.get("long_words_removed", 0) for r in records),
            "c1_controls_repaired": sum(r.get("c1_controls_repaired", 0) for r in records),
            "template_lines_removed": sum(r.get("template_lines_removed", 0) for r in records),
            "documents_per_split": per_split,
            "split_rebalanced": rebalanced,
            "sentences": sentences,
            "characters": characters,
            "document_characters_histogram": _histogram(lengths),
            "shards": sorted(p.name for p in tmp.glob("documents-*.parquet")),
            "parts": [{"unit": display_path(local_unit(r["unit"])), "key": r["key"]} for r in records],
            "config": config,
        }
        stage.write_json(tmp / "manifest.json", manifest)
        stage.write_stage_record(tmp, key=key, stage="ingest", config=config, outputs={"manifest": "manifest.json"})
    logger.info("ingest: %d read, %d kept, rejected %s -> %s", read, kept, dict(rejected), output_dir)
    return output_dir


def _histogram(lengths: list[int]) -> list[list]:
    """Documents by size in characters: [[bucket, count], ...] in bucket order."""
    edges = [0, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]
    counts = np.histogram(np.asarray(lengths), bins=[*edges, np.inf])[0] if lengths else np.zeros(len(edges))
    names = [f"{lo:,}-{hi:,}" for lo, hi in zip(edges, edges[1:])] + [f">={edges[-1]:,}"]
    return [[name, int(c)] for name, c in zip(names, counts)]


def _source_of(unit: str, sources: tuple[str, ...]) -> str:
    """The configured source an input unit came from (a directory, a glob, a file or an hf: spec)."""
    for source in sources:
        if unit == source or unit.startswith(source.rstrip("/") + "/") or fnmatch.fnmatch(unit, source):
            return source
    return unit


# Documents each split needs at least, where the corpus has them: NSP and SOP take a random next segment from
# another document of the same split.
MIN_SPLIT_DOCUMENTS = 2


def _ensure_both_splits(decisions: list[np.ndarray], points: list[np.ndarray]) -> bool:
    """On a small corpus the hash split can leave a side with fewer than MIN_SPLIT_DOCUMENTS: move the documents
    nearest the threshold over (deterministic), while the other side keeps at least as many (or, for an empty side,
    one document)."""
    moved = False
    for short, other, nearest in ((2, 1, min), (1, 2, max)):
        while True:
            n_short, n_other = (sum(int((d == s).sum()) for d in decisions) for s in (short, other))
            if not n_short < MIN_SPLIT_DOCUMENTS or not (n_other > MIN_SPLIT_DOCUMENTS or (n_short == 0 and n_other > 1)):
                break
            value, k = nearest((nearest(p[d == other]), k) for k, (d, p) in enumerate(zip(decisions, points))
                               if (d == other).any())
            decisions[k][int(np.flatnonzero((decisions[k] == other) & (points[k] == value))[0])] = short
            moved = True
    return moved


def ingest_key(config: IngestConfig, part_keys: list[str]) -> str:
    return stage.hash_json({"config": config, "parts": part_keys, "version": 2})


def plan_ingest(config: IngestConfig, output_dir: str | Path) -> dict[str, Any]:
    """What a run of the stage does, as plain data any runner takes: the input `units` (each one
    `process_input`), the `parts_dir`, the stage `key`, and `up_to_date` when the output is already there (nothing
    to run). Stale temporaries of killed writers are removed first."""
    output_dir = Path(output_dir)
    stage.remove_stale_temporaries(output_dir)
    units = input_units(config.sources)
    key = ingest_key(config, [part_key(u, config) for u in units])
    return {"key": key, "output_dir": str(output_dir), "parts_dir": str(parts_dir_for(output_dir)),
            "config": stage.to_jsonable(config), "units": units,
            "up_to_date": stage.completed_stage(output_dir, key) is not None}


def finish_ingest(plan: dict[str, Any], records: list[dict[str, Any]], executor=None) -> Path:
    """The corpus-wide step of a planned run, once every unit has its part (`records` in plan order); the near
    dedup's units run on `executor` when given (a Dask client's `get_executor()`)."""
    config = stage.config_from_dict(IngestConfig, plan["config"])
    return merge_parts(records, config, plan["parts_dir"], plan["output_dir"], key=plan["key"], executor=executor)


def ingest_corpus(config: IngestConfig, output_dir: str | Path) -> Path:
    """Run the whole stage in this process (the Prefect flow runs the units of the same plan in parallel)."""
    plan = plan_ingest(config, output_dir)
    if plan["up_to_date"]:
        logger.info("ingest: %s is up to date, skipping", output_dir)
        return Path(output_dir)
    return finish_ingest(plan, [process_input(u, config, plan["parts_dir"]) for u in plan["units"]])


def read_ingested(documents_dir: str | Path, split: str) -> list[list[str]]:
    """The sentences of each document of one split of an ingest output, in shard order."""
    shards = sorted(Path(documents_dir).glob(f"documents-{split}-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no documents-{split}-*.parquet in {documents_dir}: run the ingest stage first")
    return [doc for shard in shards for doc in pq.read_table(shard, columns=["sentences"]).column("sentences").to_pylist()]
