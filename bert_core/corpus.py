"""Corpus reading and the ingest stage: sources -> cleaned, sentence-split documents in Parquet.

Sources are local files, directories or globs in plain text, JSONL or Parquet (optionally gzip/bz2/xz
compressed), WikiExtractor `<doc>` files, or Hugging Face datasets by name (`hf:NAME[:CONFIG][:SPLIT]`, loaded with
`datasets.load_dataset`, which needs the dataset in the local cache when the hub is offline). A file that cannot
be read is not fatal: it becomes a document with an `error`, and the cleaning step counts it as rejected.

The stage writes `documents-train.parquet` and `documents-validation.parquet` (a deterministic split by document
id hash) plus `manifest.json` with counts per source and rejections by reason, so that read = kept + rejected.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import json
import logging
import lzma
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bert_core import stage
from bert_core.cleaning import CleaningConfig, clean_documents

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
SAMPLE_SOURCES = (str(SAMPLE_DIR / "corpus" / "wikipedia"), str(SAMPLE_DIR / "corpus" / "books"))

_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_TEXT_SUFFIXES = {".txt", ".text", ""}
_WIKI_DOC_OPEN = re.compile(r'<doc id="(?P<id>[^"]*)"[^>]*?title="(?P<title>[^"]*)"[^>]*>')


@dataclass(frozen=True, kw_only=True)
class Document:
    id: str
    source: str
    text: str = ""
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    sources: tuple[str, ...] = SAMPLE_SOURCES
    text_column: str = "text"
    id_column: str | None = None
    text_document_boundary: str = "file"  # "file": one document per text file; "blank_line": paragraphs
    validation_fraction: float = 0.05
    seed: int = 0
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)


def _base_suffix(path: Path) -> tuple[str, str]:
    """(format suffix, compression suffix) of a file name like `a.jsonl.gz`."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSED else ""
    rest = suffixes[:-1] if compression else suffixes
    return (rest[-1] if rest else ""), compression


def _open_text(path: Path):
    _, compression = _base_suffix(path)
    opener = _COMPRESSED.get(compression, open)
    # utf-8-sig drops a leading BOM (common in Gutenberg files); invalid bytes raise and are counted upstream.
    return opener(path, "rt", encoding="utf-8-sig", errors="strict")


def expand_source(source: str) -> list[Path]:
    """Files named by a path, a directory (recursively) or a glob, sorted for determinism."""
    path = Path(source)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    elif any(ch in source for ch in "*?["):
        files = [Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file()]
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"corpus source {source!r} is neither a file, a directory nor a matching glob")
    return sorted(files)


def _read_wikiextractor(handle, source: str) -> Iterator[Document]:
    current_id, title, lines = None, None, []
    for line in handle:
        match = _WIKI_DOC_OPEN.match(line)
        if match:
            current_id, title, lines = match["id"], match["title"], []
            continue
        if line.startswith("</doc>") and current_id is not None:
            body = [ln.strip() for ln in lines]
            if body and body[0] == title:
                body = body[1:]  # WikiExtractor repeats the title as the first line
            # One paragraph per line in WikiExtractor output: keep them as paragraphs.
            yield Document(id=f"wiki:{current_id}", source=source, text="\n\n".join(b for b in body if b))
            current_id = None
            continue
        if current_id is not None:
            lines.append(line)


def _read_file(path: Path, config: IngestConfig) -> Iterator[Document]:
    fmt, _ = _base_suffix(path)
    source = str(path)
    if fmt == ".parquet":
        table = pq.read_table(path)
        if config.text_column not in table.column_names:
            raise ValueError(f"{path}: no column {config.text_column!r} (columns: {table.column_names})")
        ids = table.column(config.id_column).to_pylist() if config.id_column else None
        for row, text in enumerate(table.column(config.text_column).to_pylist()):
            doc_id = f"{path.name}:{ids[row] if ids else row}"
            if not isinstance(text, str):
                yield Document(id=doc_id, source=source, error="text_not_a_string")
            else:
                yield Document(id=doc_id, source=source, text=text)
        return
    with _open_text(path) as handle:
        if fmt in {".jsonl", ".json", ".ndjson"}:
            for row, line in enumerate(handle):
                if not line.strip():
                    continue
                doc_id = f"{path.name}:{row}"
                try:
                    record = json.loads(line)
                    text = record[config.text_column]
                    if config.id_column:
                        doc_id = f"{path.name}:{record[config.id_column]}"
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    yield Document(id=doc_id, source=source, error=f"bad_json_line: {err}")
                    continue
                if not isinstance(text, str):
                    yield Document(id=doc_id, source=source, error="text_not_a_string")
                else:
                    yield Document(id=doc_id, source=source, text=text)
            return
        head = handle.read(4096)
        rest = handle.read()
        text = head + rest
    if head.lstrip().startswith("<doc "):
        yield from _read_wikiextractor(iter(text.splitlines(keepends=True)), source)
    elif config.text_document_boundary == "blank_line":
        for row, paragraph in enumerate(re.split(r"\n\s*\n", text)):
            if paragraph.strip():
                yield Document(id=f"{path.name}:{row}", source=source, text=paragraph)
    else:
        yield Document(id=path.name, source=source, text=text)


def _read_hf(source: str, config: IngestConfig) -> Iterator[Document]:
    import datasets  # imported lazily: only this source type needs it

    parts = source[len("hf:"):].split(":")
    name, ds_config, split = parts[0], (parts[1] or None) if len(parts) > 1 else None, parts[2] if len(parts) > 2 else "train"
    dataset = datasets.load_dataset(name, ds_config, split=split, streaming=True)
    for row, record in enumerate(dataset):
        doc_id = f"{name}:{record[config.id_column] if config.id_column else row}"
        text = record.get(config.text_column)
        if isinstance(text, str):
            yield Document(id=doc_id, source=source, text=text)
        else:
            yield Document(id=doc_id, source=source, error="text_not_a_string")


def read_documents(source: str, config: IngestConfig) -> Iterator[Document]:
    """Documents from one source; unreadable files become documents with an error instead of crashing."""
    if source.startswith("hf:"):
        yield from _read_hf(source, config)
        return
    for path in expand_source(source):
        try:
            yield from _read_file(path, config)
        except (UnicodeDecodeError, OSError, EOFError, lzma.LZMAError, pa.ArrowException, ValueError) as err:
            logger.warning("cannot read %s: %s", path, err)
            yield Document(id=path.name, source=str(path), error=f"{type(err).__name__}: {err}")


def _split_point(doc_id: str, config: IngestConfig) -> float:
    """A number in [0, 1) fixed by the document id and seed: documents below validation_fraction are held out."""
    digest = hashlib.sha256(f"{config.seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _ensure_both_splits(rows: dict[str, dict[str, list]], points: dict[str, list[float]]) -> bool:
    """On a small corpus the hash split can leave one side empty: move the nearest document over (deterministic)."""
    for empty, full, pick in (("validation", "train", min), ("train", "validation", max)):
        if not rows[empty]["doc_id"] and len(rows[full]["doc_id"]) >= 2:
            index = points[full].index(pick(points[full]))
            for column in rows[full]:
                rows[empty][column].append(rows[full][column].pop(index))
            points[empty].append(points[full].pop(index))
            return True
    return False


def _source_files(config: IngestConfig) -> list[Path]:
    return [p for s in config.sources if not s.startswith("hf:") for p in expand_source(s)]


def ingest_corpus(config: IngestConfig, output_dir: str | Path) -> Path:
    """Run the ingest stage; skip it when `output_dir` already holds the output of the same inputs and config."""
    output_dir = Path(output_dir)
    key = stage.hash_json({"config": config, "inputs": stage.hash_files(_source_files(config)), "version": 1})
    if stage.completed_stage(output_dir, key):
        logger.info("ingest: %s is up to date, skipping", output_dir)
        return output_dir

    schema = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("sentences", pa.list_(pa.string()))])
    rows: dict[str, dict[str, list]] = {s: {"doc_id": [], "source": [], "sentences": []} for s in ("train", "validation")}
    points: dict[str, list[float]] = {"train": [], "validation": []}
    rejected: Counter = Counter()
    read_per_source: Counter = Counter()
    kept_per_source: Counter = Counter()
    sentences_total = chars_total = 0
    seen: set[str] = set()
    for source in config.sources:
        counted = _count_reads(read_documents(source, config), read_per_source, source)
        for doc in clean_documents(counted, config.cleaning, rejected, seen):
            point = _split_point(doc.id, config)
            split = "validation" if point < config.validation_fraction else "train"
            points[split].append(point)
            rows[split]["doc_id"].append(doc.id)
            rows[split]["source"].append(doc.source)
            rows[split]["sentences"].append(list(doc.sentences))
            kept_per_source[source] += 1
            sentences_total += len(doc.sentences)
            chars_total += sum(len(s) for s in doc.sentences)

    read = sum(read_per_source.values())
    kept = sum(kept_per_source.values())
    if kept == 0:
        raise ValueError(f"ingest: no document survived cleaning ({read} read, rejected: {dict(rejected)})")
    moved = _ensure_both_splits(rows, points) if config.validation_fraction > 0 else False
    if not rows["validation"]["doc_id"] or not rows["train"]["doc_id"]:
        raise ValueError(f"ingest: {kept} document(s) kept; at least 2 are needed for a train and a validation split")
    assert read == kept + sum(rejected.values()), "every document read must be kept or rejected"
    with stage.atomic_directory(output_dir) as tmp:
        for split, columns in rows.items():
            pq.write_table(pa.table(columns, schema=schema), tmp / f"documents-{split}.parquet")
        manifest = {
            "documents_read": read,
            "documents_kept": kept,
            "documents_rejected": dict(rejected),
            "read_per_source": dict(read_per_source),
            "kept_per_source": dict(kept_per_source),
            "documents_per_split": {s: len(c["doc_id"]) for s, c in rows.items()},
            "split_rebalanced": moved,
            "sentences": sentences_total,
            "characters": chars_total,
            "config": config,
        }
        stage.write_json(tmp / "manifest.json", manifest)
        stage.write_stage_record(tmp, key=key, stage="ingest", config=config, outputs={"manifest": "manifest.json"})
    logger.info("ingest: %d read, %d kept, rejected %s -> %s", read, kept, dict(rejected), output_dir)
    return output_dir


def _count_reads(documents: Iterator[Document], counter: Counter, source: str) -> Iterator[Document]:
    for doc in documents:
        counter[source] += 1
        yield doc


def read_ingested(documents_dir: str | Path, split: str) -> list[list[str]]:
    """The sentences of each document of one split of an ingest output."""
    path = Path(documents_dir) / f"documents-{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the ingest stage first")
    return pq.read_table(path, columns=["sentences"]).column("sentences").to_pylist()
