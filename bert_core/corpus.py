"""Corpus sources: local files, Wikipedia dumps, books and Hugging Face datasets -> `Document`s.

A source is a file, a directory (read recursively), a glob, or `hf:NAME[:CONFIG][:SPLIT]` (loaded with
`datasets.load_dataset(..., streaming=True)`; NAME may be a local dataset directory; with the hub offline it must be
in the local cache). File formats, by suffix, optionally compressed with gzip, bz2, xz or zstd:
- `.jsonl`/`.json`/`.ndjson` and `.parquet`: one document per row, text in `text_column` (id in `id_column`);
- `.xml` (MediaWiki XML dumps such as `enwiki-*-pages-articles.xml.bz2`): one document per article, wiki markup
  removed with mwparserfromhell; redirects and non-article namespaces are skipped and counted;
- any other file: plain text, one document per file (books; Project Gutenberg headers are stripped when cleaning)
  or one per blank-line separated paragraph; WikiExtractor `<doc>` files are recognised by their content.
Reading never raises on bad input: an unreadable file or record becomes a `Document` with an `error`, and the
cleaning step counts it as rejected.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import logging
import lzma
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
SAMPLE_SOURCES = (str(SAMPLE_DIR / "corpus" / "wikipedia"), str(SAMPLE_DIR / "corpus" / "books"))

SKIP_REDIRECT = "wiki_redirect"
SKIP_NAMESPACE = "wiki_non_article"


def _open_zstd(path, mode, **kwargs):
    import zstandard

    return zstandard.open(path, mode, **kwargs)


_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zst": _open_zstd, ".zstd": _open_zstd}
_WIKI_DOC_OPEN = re.compile(r'<doc id="(?P<id>[^"]*)"[^>]*?title="(?P<title>[^"]*)"[^>]*>')
_WIKI_DROP_LINKS = re.compile(r"^\s*:?\s*(file|image|category|media):", re.I)


@dataclass(frozen=True, kw_only=True)
class Document:
    id: str
    source: str
    text: str = ""
    error: str | None = None  # the file or record could not be read
    skip: str | None = None  # deliberately not a document (a redirect, a talk page): counted under this reason


@dataclass(frozen=True, kw_only=True)
class ReadConfig:
    text_column: str = "text"
    id_column: str | None = None
    text_document_boundary: str = "file"  # "file": one document per text file; "blank_line": per paragraph


def _base_suffix(path: Path) -> tuple[str, str]:
    """(format suffix, compression suffix) of a file name like `a.jsonl.gz`."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSED else ""
    rest = suffixes[:-1] if compression else suffixes
    return (rest[-1] if rest else ""), compression


def _open_binary(path: Path):
    _, compression = _base_suffix(path)
    return _COMPRESSED[compression](path, "rb") if compression else open(path, "rb")


def _open_text(path: Path):
    _, compression = _base_suffix(path)
    opener = _COMPRESSED.get(compression, open)
    # utf-8-sig drops a leading BOM (common in Gutenberg files); invalid bytes raise and are counted upstream.
    return opener(path, "rt", encoding="utf-8-sig", errors="strict")


def expand_source(source: str) -> list[Path]:
    """Files named by a path, a directory (recursively) or a glob, sorted for determinism."""
    path = Path(source)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts)]
    elif any(ch in source for ch in "*?["):
        files = [Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file()]
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"corpus source {source!r} is neither a file, a directory nor a matching glob")
    return sorted(files)


def wikitext_to_text(wikitext: str) -> str:
    """Plain text of a MediaWiki article: templates, refs, tables, files, categories and headings removed, links
    replaced by their text, one paragraph per block."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    for node in list(code.ifilter_tags(recursive=True)):
        if str(node.tag).lower() in {"table", "ref", "gallery", "math", "timeline", "references"}:
            _remove(code, node)
    for node in list(code.ifilter_wikilinks(recursive=True)):
        if _WIKI_DROP_LINKS.match(str(node.title)):
            _remove(code, node)
    for node in list(code.ifilter_headings(recursive=True)):
        _remove(code, node)
    text = code.strip_code(normalize=True, collapse=True, keep_template_params=False)
    lines = [line.strip() for line in text.split("\n")]
    # List bullets and indentation markers survive strip_code as leading characters.
    lines = [re.sub(r"^[*#:;]+\s*", "", line) for line in lines]
    return "\n\n".join(line for line in lines if line)


def _remove(code, node) -> None:
    try:
        code.remove(node)
    except ValueError:
        pass  # already gone with a parent that was removed first


def _read_wiki_xml(path: Path, source: str) -> Iterator[Document]:
    with _open_binary(path) as handle:
        page: dict[str, str | bool] = {}
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
                        yield Document(id=doc_id, source=source, text=wikitext_to_text(str(page.get("text", ""))))
                    except Exception as err:  # noqa: BLE001 - a page the parser chokes on is one rejected page
                        yield Document(id=doc_id, source=source, error=f"wikitext: {type(err).__name__}: {err}")
                page = {}
                elem.clear()
            if tag == "revision":
                elem.clear()


def _read_wikiextractor(lines, source: str) -> Iterator[Document]:
    current_id, title, body = None, None, []
    for line in lines:
        match = _WIKI_DOC_OPEN.match(line)
        if match:
            current_id, title, body = match["id"], match["title"], []
            continue
        if line.startswith("</doc>") and current_id is not None:
            paragraphs = [ln.strip() for ln in body]
            if paragraphs and paragraphs[0] == title:
                paragraphs = paragraphs[1:]  # WikiExtractor repeats the title as the first line
            yield Document(id=f"wiki:{current_id}", source=source, text="\n\n".join(p for p in paragraphs if p))
            current_id = None
            continue
        if current_id is not None:
            body.append(line)


def _read_rows(path: Path, config: ReadConfig) -> Iterator[Document]:
    fmt, _ = _base_suffix(path)
    source = str(path)
    if fmt == ".parquet":
        parquet = pq.ParquetFile(path)
        if config.text_column not in parquet.schema_arrow.names:
            raise ValueError(f"{path}: no column {config.text_column!r} (columns: {parquet.schema_arrow.names})")
        row = 0
        columns = [config.text_column] + ([config.id_column] if config.id_column else [])
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            ids = batch.column(config.id_column).to_pylist() if config.id_column else None
            for i, text in enumerate(batch.column(config.text_column).to_pylist()):
                doc_id = f"{path.name}:{ids[i] if ids else row}"
                row += 1
                if isinstance(text, str):
                    yield Document(id=doc_id, source=source, text=text)
                else:
                    yield Document(id=doc_id, source=source, error="text_not_a_string")
        return
    with _open_text(path) as handle:
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
            if isinstance(text, str):
                yield Document(id=doc_id, source=source, text=text)
            else:
                yield Document(id=doc_id, source=source, error="text_not_a_string")


def _read_file(path: Path, config: ReadConfig) -> Iterator[Document]:
    fmt, _ = _base_suffix(path)
    if fmt in {".parquet", ".jsonl", ".json", ".ndjson"}:
        yield from _read_rows(path, config)
        return
    if fmt == ".xml":
        yield from _read_wiki_xml(path, str(path))
        return
    with _open_text(path) as handle:
        text = handle.read()
    if text.lstrip().startswith("<doc "):
        yield from _read_wikiextractor(iter(text.splitlines(keepends=True)), str(path))
    elif config.text_document_boundary == "blank_line":
        for row, paragraph in enumerate(re.split(r"\n\s*\n", text)):
            if paragraph.strip():
                yield Document(id=f"{path.name}:{row}", source=str(path), text=paragraph)
    else:
        yield Document(id=path.name, source=str(path), text=text)


def _read_hf(source: str, config: ReadConfig) -> Iterator[Document]:
    import datasets  # imported lazily: only this source type needs it

    parts = source[len("hf:"):].split(":")
    name = parts[0]
    ds_config = parts[1] or None if len(parts) > 1 else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    dataset = datasets.load_dataset(name, ds_config, split=split, streaming=True)
    for row, record in enumerate(dataset):
        doc_id = f"{Path(name).name}:{record[config.id_column] if config.id_column else row}"
        text = record.get(config.text_column)
        if isinstance(text, str):
            yield Document(id=doc_id, source=source, text=text)
        else:
            yield Document(id=doc_id, source=source, error="text_not_a_string")


def read_table_file(path: str | Path, *, string_columns: tuple[str, ...] = ()) -> pa.Table:
    """A whole TSV/CSV/JSONL/Parquet file (optionally gzip/bz2) as an Arrow table: task and evaluation files.

    TSV is read without quoting, as GLUE's own readers do (its fields contain bare quotes); `string_columns` are
    kept as text even when they look numeric.
    """
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in {".gz", ".bz2"}]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".parquet":
        return pq.read_table(path)
    with pa.input_stream(str(path), compression="detect") as stream:
        if kind in {".jsonl", ".json"}:
            return pajson.read_json(stream)
        if kind in {".tsv", ".csv"}:
            parse = pacsv.ParseOptions(delimiter="\t" if kind == ".tsv" else ",", quote_char=False if kind == ".tsv" else '"')
            # A UTF-8 byte-order mark (GLUE's MRPC files have one) would otherwise stick to the first column name.
            convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in string_columns}
                                           | {"\ufeff" + c: pa.string() for c in string_columns})
            table = pacsv.read_csv(stream, parse_options=parse, convert_options=convert)
            return table.rename_columns([c.lstrip("\ufeff") for c in table.column_names])
    raise ValueError(f"{path}: unsupported file type (use .tsv, .csv, .jsonl or .parquet)")


def input_units(sources: tuple[str, ...] | list[str]) -> list[str]:
    """The independent inputs of a corpus: one per file (sources expanded), one per Hugging Face dataset."""
    units: list[str] = []
    for source in sources:
        units.extend([source] if source.startswith("hf:") else [str(p) for p in expand_source(source)])
    if not units:
        raise ValueError(f"the corpus sources {list(sources)} name no files")
    return units


def read_unit(unit: str, config: ReadConfig) -> Iterator[Document]:
    """Documents of one input unit (a file or an `hf:` dataset); unreadable input becomes error documents."""
    if unit.startswith("hf:"):
        yield from _read_hf(unit, config)
        return
    path = Path(unit)
    count = 0
    try:
        for doc in _read_file(path, config):
            count += 1
            yield doc
    except (UnicodeDecodeError, OSError, EOFError, lzma.LZMAError, ET.ParseError, pa.ArrowException, ValueError) as err:
        logger.warning("cannot read %s: %s", path, err)
        yield Document(id=f"{path.name}:{count}", source=unit, error=f"{type(err).__name__}: {err}")


def read_documents(source: str, config: ReadConfig | None = None) -> Iterator[Document]:
    """Documents from every input unit of one source."""
    config = config or ReadConfig()
    for unit in input_units([source]):
        yield from read_unit(unit, config)
