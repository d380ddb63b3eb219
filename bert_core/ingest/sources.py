"""Corpus sources: local files, Wikipedia dumps, books and Hugging Face datasets -> `Document`s.

A source is a file, a directory (read recursively), a glob, or `hf:NAME[:CONFIG][:SPLIT]` (loaded with
`datasets.load_dataset(..., streaming=True)`; NAME may be a local dataset directory; with the hub offline it must be
in the local cache). File formats, by suffix, optionally compressed with gzip, bz2, xz or zstd:
- `.jsonl`/`.json`/`.ndjson` and `.parquet`: one document per row, text in `text_column` (id in `id_column`);
- `.xml` (MediaWiki XML dumps such as `enwiki-*-pages-articles.xml.bz2`): one document per article, wiki markup
  removed with mwparserfromhell; redirects and non-article namespaces are skipped and counted;
- any other file: plain text, one document per file (books; Project Gutenberg headers are stripped when cleaning)
  or one per blank-line separated paragraph; WikiExtractor `<doc>` files are recognised by their content;
- `PATH::COLUMN[,COLUMN]` (the form of `IngestConfig.decontamination_files`): the text columns of a task file
  (TSV/CSV/JSONL/Parquet, e.g. `sst2/train.tsv::sentence`, `mrpc/train.tsv::#1 String,#2 String`), for
  pretraining on downstream text (Krishna et al. 2023): each row's column texts are sentences as they stand (SST-2's
  phrases have no end punctuation to split on), `rows_per_document` rows in file order one document.
Reading never raises on bad input: a bad record becomes a `Document` with an `error` reason (and a `detail` naming
the file and line) and the file goes on; a file that cannot be read at all, or whose archive breaks off, becomes one
such `Document` after the complete records before the problem. The cleaning step counts each under its reason.
Bytes are decoded by one rule (`decode_text`): byte-order mark, else UTF-8 with any byte outside a UTF-8 sequence
read as cp1252, kept when the result looks like text, else `binary_file`. A `.json` file may hold one array of records.
"""

from __future__ import annotations

import glob
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from bert_core.config import PositiveInt, check_fields
from bert_core.ingest.textfiles import (base_suffix, column_spec, decode_text, display_path, local_unit, open_binary,
    portable_unit, read_table_file, scrub_surrogates)
from bert_core.ingest.wikitext import wikitext_to_text

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
SAMPLE_SOURCES = (str(SAMPLE_DIR / "corpus" / "wikipedia"), str(SAMPLE_DIR / "corpus" / "books"))

SKIP_REDIRECT = "wiki_redirect"
SKIP_NAMESPACE = "wiki_non_article"

# Why a read produced no document; `cleaning.clean_document` counts each under its reason, so read == kept + rejected
# holds over records. A file-level reason counts one record for the file (and the complete records before the
# problem, if any, are kept).
UNREADABLE_FILE = "unreadable_file"  # cannot be opened, decompressed or parsed at all
TRUNCATED_ARCHIVE = "truncated_archive"  # the compressed stream ends early: the record it cut is this one
BINARY_FILE = "binary_file"  # the bytes decode to no plausible text under the decoding rule (`decode_text`)
BAD_JSON_RECORD = "bad_json_record"  # a line or array element that is not a JSON object (or nests too deep)
MISSING_TEXT_FIELD = "missing_text_field"
TEXT_NOT_A_STRING = "text_not_a_string"
WIKITEXT_ERROR = "wikitext_parse_error"
MALFORMED_XML = "malformed_xml"  # the XML dump breaks off: pages before the break are kept
# Repairs that keep the document but are listed among the problem files:
UNCLOSED_DOC = "unclosed_doc"  # a WikiExtractor <doc> without </doc>: its text runs to the next <doc> or the end
SURROGATES_REPLACED = "surrogates_replaced"  # lone UTF-16 surrogates (JSON "\\ud800") replaced by U+FFFD


_WIKI_DOC_OPEN = re.compile(r'<doc id="(?P<id>[^"]*)"[^>]*?title="(?P<title>[^"]*)"[^>]*>')


@dataclass(frozen=True, kw_only=True)
class Document:
    id: str
    source: str
    text: str = ""
    error: str | None = None  # the file or record could not be read: one of the reasons above
    skip: str | None = None  # deliberately not a document (a redirect, a talk page): counted under this reason
    detail: str | None = None  # for an error or a note: what went wrong, where (file and line or record)
    note: str | None = None  # a repair that kept the document (UNCLOSED_DOC, SURROGATES_REPLACED)
    encoding: str | None = None  # how the bytes were decoded ("utf-8", "cp1252", ...)
    sentences: tuple[str, ...] | None = None  # text already in sentences (a task file's rows): not split again


@dataclass(frozen=True, kw_only=True)
class ReadConfig:
    text_column: str = "text"  # the text column of table and JSON Lines sources
    id_column: str | None = None  # a column of document ids (default: the file and row)
    text_document_boundary: Literal["file", "blank_line"] = "file"  # "file": one document per text file; "blank_line": per paragraph
    rows_per_document: PositiveInt = 20  # a task file's rows per document (`PATH::COLUMNS` sources)

    def __post_init__(self):
        check_fields(self)


def task_source(source: str) -> tuple[str, tuple[str, ...]]:
    """(path, text columns) of a `PATH::COLUMNS` source; (source, ()) for any other, `hf:` names included."""
    return (source, ()) if source.startswith("hf:") else column_spec(source)


def expand_source(source: str) -> list[Path]:
    """Files named by a path, a directory (recursively) or a glob, sorted for determinism.

    Hidden files and directories (a name starting with ".") below the given source are left out; the source's own
    path may pass through hidden or relative parts (`../corpus`, `/data/.cache/corpus`).
    """
    if not isinstance(source, str):
        raise TypeError(f"a corpus source is a path, glob or hf: name given as a string, not {source!r}")
    path = Path(source)
    if path.is_dir():
        files = [p for p in path.rglob("*")
                 if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    elif any(ch in source for ch in "*?["):
        files = [Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file()]
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"corpus source {source!r} is neither a file, a directory nor a matching glob")
    return sorted(files)


def _read_wiki_xml(path: Path, source: str) -> Iterator[Document]:
    name = display_path(path.name)
    with open_binary(path) as handle:
        page: dict[str, str | bool] = {}
        try:
            for event, elem in ET.iterparse(handle, events=("end",)):
                tag = elem.tag.rsplit("}", 1)[-1]
                if tag in {"title", "ns", "id"} and tag not in page:
                    page[tag] = elem.text or ""
                elif tag == "redirect":
                    page["redirect"] = True
                elif tag == "text":
                    page["text"] = elem.text or ""
                elif tag == "page":
                    doc_id = f"wiki:{page.get('id', '')}"
                    if page.get("ns", "0") != "0":
                        yield Document(id=doc_id, source=source, skip=SKIP_NAMESPACE)
                    elif page.get("redirect") or str(page.get("text", "")).lstrip().lower().startswith("#redirect"):
                        yield Document(id=doc_id, source=source, skip=SKIP_REDIRECT)
                    else:
                        try:
                            text = wikitext_to_text(str(page.get("text", "")))
                        except Exception as err:  # noqa: BLE001 - a page the parser chokes on is one rejected page
                            yield Document(id=doc_id, source=source, error=WIKITEXT_ERROR,
                                           detail=f"{source}: page {page.get('title', '')!r}: {type(err).__name__}: {err}")
                        else:
                            yield Document(id=doc_id, source=source, text=text, encoding="xml")
                    page = {}
                    elem.clear()
                if tag == "revision":
                    elem.clear()
        except ET.ParseError as err:
            yield Document(id=f"{name}:xml", source=source, error=MALFORMED_XML, detail=f"{source}: {err}")


def _read_wikiextractor(lines: list[str], source: str, encoding: str) -> Iterator[Document]:
    current_id, title, body, opened_at = None, None, [], 0

    def finish(closed: bool) -> Document:
        paragraphs = [ln.strip() for ln in body]
        if paragraphs and paragraphs[0] == title:
            paragraphs = paragraphs[1:]  # WikiExtractor repeats the title as the first line
        note = None if closed else UNCLOSED_DOC
        detail = None if closed else f"{source}:{opened_at}: <doc id={current_id!r}> has no </doc>"
        return Document(id=f"wiki:{current_id}", source=source, text="\n\n".join(p for p in paragraphs if p),
                        encoding=encoding, note=note, detail=detail)

    for number, line in enumerate(lines, 1):
        match = _WIKI_DOC_OPEN.match(line)
        if match:
            if current_id is not None:
                yield finish(closed=False)
            current_id, title, body, opened_at = match["id"], match["title"], [], number
            continue
        if line.startswith("</doc>") and current_id is not None:
            yield finish(closed=True)
            current_id = None
            continue
        if current_id is not None:
            body.append(line)
    if current_id is not None:
        yield finish(closed=False)


def _json_record(value: Any, where: str, doc_id: str, source: str, config: ReadConfig, encoding: str) -> Document:
    """The document of one JSON record (a parsed line or array element)."""
    if not isinstance(value, dict):
        return Document(id=doc_id, source=source, error=BAD_JSON_RECORD,
                        detail=f"{where}: a {type(value).__name__}, not a JSON object")
    if config.text_column not in value:
        return Document(id=doc_id, source=source, error=MISSING_TEXT_FIELD,
                        detail=f"{where}: no field {config.text_column!r} (fields: {sorted(value)[:10]})")
    text = value[config.text_column]
    if config.id_column and config.id_column in value:
        doc_id = f"{doc_id.rsplit(':', 1)[0]}:{scrub_surrogates(str(value[config.id_column]))[0]}"
    if not isinstance(text, str):
        return Document(id=doc_id, source=source, error=TEXT_NOT_A_STRING,
                        detail=f"{where}: field {config.text_column!r} is a {type(text).__name__}, not a string")
    text, scrubbed = scrub_surrogates(text)
    return Document(id=doc_id, source=source, text=text, encoding=encoding,
                    note=SURROGATES_REPLACED if scrubbed else None,
                    detail=f"{where}: lone surrogates replaced by U+FFFD" if scrubbed else None)


def _parse_json(text: str) -> Any:
    """json.loads that reports a nesting too deep for the parser as a ValueError (it raises RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def _read_json_lines(handle, path: Path, source: str, config: ReadConfig) -> Iterator[Document]:
    name = display_path(path.name)
    for number, raw in enumerate(handle, 1):
        if not raw.strip():
            continue
        doc_id, where = f"{name}:{number - 1}", f"{source}:{number}"
        decoded = decode_text(raw)
        if decoded is None:
            yield Document(id=doc_id, source=source, error=BINARY_FILE, detail=f"{where}: the line is not text")
            continue
        line, encoding = decoded
        try:
            value = _parse_json(line)
        except ValueError as err:
            yield Document(id=doc_id, source=source, error=BAD_JSON_RECORD, detail=f"{where}: {err}")
            continue
        yield _json_record(value, where, doc_id, source, config, encoding)


def _read_json(path: Path, source: str, config: ReadConfig) -> Iterator[Document]:
    """A `.json` file: one JSON array of records, one JSON object, or (what many `.json` files are) JSON lines."""
    with open_binary(path) as handle:
        data = handle.read()
    decoded = decode_text(data)
    if decoded is not None and re.match(rb"\s*[\[{]", data):
        try:
            value = _parse_json(decoded[0])
        except ValueError:
            value = None  # not one JSON value: JSON lines (or broken), read line by line below
        if isinstance(value, list):
            name = display_path(path.name)
            for i, element in enumerate(value):
                yield _json_record(element, f"{source}: element {i}", f"{name}:{i}", source, config, decoded[1])
            return
        if isinstance(value, dict):
            yield _json_record(value, source, f"{display_path(path.name)}:0", source, config, decoded[1])
            return
    yield from _read_json_lines(io.BytesIO(data), path, source, config)


def _read_parquet(path: Path, source: str, config: ReadConfig) -> Iterator[Document]:
    parquet = pq.ParquetFile(path)
    if config.text_column not in parquet.schema_arrow.names:
        raise _FileProblem(MISSING_TEXT_FIELD, f"no column {config.text_column!r} (columns: {parquet.schema_arrow.names})")
    row = 0
    name = display_path(path.name)
    columns = [config.text_column] + ([config.id_column] if config.id_column else [])
    for batch in parquet.iter_batches(batch_size=1024, columns=columns):
        ids = batch.column(config.id_column).to_pylist() if config.id_column else None
        for i, text in enumerate(batch.column(config.text_column).to_pylist()):
            doc_id = f"{name}:{ids[i] if ids else row}"
            row += 1
            if isinstance(text, str):
                yield Document(id=doc_id, source=source, text=text, encoding="utf-8")
            else:
                yield Document(id=doc_id, source=source, error=TEXT_NOT_A_STRING,
                               detail=f"{source}: row {row - 1}: {config.text_column!r} is {text!r}, not a string")


def _read_text(path: Path, source: str, config: ReadConfig) -> Iterator[Document]:
    name = display_path(path.name)
    with open_binary(path) as handle:
        data = handle.read()  # a truncated archive raises here: one record, reported by read_unit
    decoded = decode_text(data)
    if decoded is None:
        raise _FileProblem(BINARY_FILE, "its bytes are not text in UTF-8/16/32, cp1252 or Latin-1")
    text, encoding = decoded
    if text.lstrip().startswith("<doc "):
        yield from _read_wikiextractor(text.splitlines(keepends=True), source, encoding)
    elif config.text_document_boundary == "blank_line":
        for row, paragraph in enumerate(re.split(r"\n\s*\n", text)):
            if paragraph.strip():
                yield Document(id=f"{name}:{row}", source=source, text=paragraph, encoding=encoding)
    else:
        yield Document(id=name, source=source, text=text, encoding=encoding)


class _FileProblem(Exception):
    """A whole file that cannot be read: counted as one record under `reason`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _read_task_rows(path: Path, source: str, columns: tuple[str, ...], config: ReadConfig) -> Iterator[Document]:
    table = read_table_file(path, string_columns=columns)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise _FileProblem(MISSING_TEXT_FIELD, f"no column(s) {missing}; its columns are {table.column_names}")
    rows = list(zip(*(table.column(c).to_pylist() for c in columns)))
    name, step = display_path(path.name), config.rows_per_document
    for start in range(0, len(rows), step):
        sentences = tuple(t.strip() for row in rows[start:start + step] for t in row if isinstance(t, str) and t.strip())
        yield Document(id=f"{name}:{start}", source=source, text=" ".join(sentences), sentences=sentences,
                       encoding="utf-8")


def _read_file(path: Path, config: ReadConfig, columns: tuple[str, ...] = ()) -> Iterator[Document]:
    fmt, _ = base_suffix(path)
    source = display_path(path)
    if columns:
        yield from _read_task_rows(path, f"{source}::{','.join(columns)}", columns, config)
    elif fmt == ".parquet":
        yield from _read_parquet(path, source, config)
    elif fmt in {".jsonl", ".ndjson"}:
        with open_binary(path) as handle:
            yield from _read_json_lines(handle, path, source, config)
    elif fmt == ".json":
        yield from _read_json(path, source, config)
    elif fmt == ".xml":
        yield from _read_wiki_xml(path, source)
    else:
        yield from _read_text(path, source, config)


def _read_hf(source: str, config: ReadConfig) -> Iterator[Document]:
    import datasets  # imported lazily: only this source type needs it

    parts = source[len("hf:"):].split(":")
    name = parts[0]
    ds_config = parts[1] or None if len(parts) > 1 else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    dataset = datasets.load_dataset(name, ds_config, split=split, streaming=True)
    for row, record in enumerate(dataset):
        doc_id = f"{Path(name).name}:{record[config.id_column] if config.id_column else row}"
        if config.text_column not in record:
            yield Document(id=doc_id, source=source, error=MISSING_TEXT_FIELD,
                           detail=f"{source}: row {row}: no field {config.text_column!r} (fields: {sorted(record)[:10]})")
            continue
        text = record[config.text_column]
        if isinstance(text, str):
            yield Document(id=doc_id, source=source, text=text, encoding="utf-8")
        else:
            yield Document(id=doc_id, source=source, error=TEXT_NOT_A_STRING,
                           detail=f"{source}: row {row}: {config.text_column!r} is a {type(text).__name__}")


def input_units(sources: tuple[str, ...] | list[str]) -> list[str]:
    """The independent inputs of a corpus: one per file (sources expanded), one per Hugging Face dataset; each as a
    `portable_unit`, so that units can travel as task parameters whatever their file names."""
    units: list[str] = []
    for source in sources:
        path, columns = task_source(source)
        suffix = f"::{','.join(columns)}" if columns else ""
        units.extend([source] if source.startswith("hf:") else
                     [portable_unit(str(p)) + suffix for p in expand_source(path)])
    if not units:
        raise ValueError(f"the corpus sources {list(sources)} name no files")
    return units


def read_unit(unit: str, config: ReadConfig) -> Iterator[Document]:
    """Documents of one input unit (a file or an `hf:` dataset). Never raises on bad input: a bad record is a
    document with an `error` reason and the file goes on; a file (or dataset) that cannot be read, or that breaks
    off, ends with one such document, after the complete records read before the problem."""
    count = 0
    unit, columns = task_source(local_unit(unit))
    source = unit if unit.startswith("hf:") else display_path(unit)
    try:
        for doc in _read_hf(unit, config) if unit.startswith("hf:") else _read_file(Path(unit), config, columns):
            count += 1
            yield doc
    except _FileProblem as problem:
        reason, detail = problem.reason, str(problem)
    except Exception as err:  # noqa: BLE001 - one bad file never stops the stage; it is counted and listed
        # A compressed stream that ends before its end marker raises EOFError (gzip, bz2, xz; zstd through
        # _ZstdReader); anything else (not an archive, a bad header, a parser error) makes the file unreadable.
        truncated = isinstance(err, EOFError) and bool(base_suffix(Path(unit))[1])
        reason, detail = (TRUNCATED_ARCHIVE if truncated else UNREADABLE_FILE), f"{type(err).__name__}: {err}"
    else:
        return
    name = unit if unit.startswith("hf:") else display_path(Path(unit).name)
    yield Document(id=f"{name}:{count}", source=source, error=reason, detail=f"{source}: {detail}")


def read_documents(source: str, config: ReadConfig | None = None) -> Iterator[Document]:
    """Documents from every input unit of one source."""
    config = config or ReadConfig()
    for unit in input_units([source]):
        yield from read_unit(unit, config)
