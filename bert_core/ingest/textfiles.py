"""Reading files: compressed files (gzip, bz2, xz, zstd that reports truncation), the one decoding rule
(`decode_text`), lone surrogates, file names that are not UTF-8 (`portable_unit`, `display_path`), and whole
table files of tasks and evaluation sets (`read_table_file`)."""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import zstandard

from bert_core.ingest.cleaning import looks_like_text


class _ZstdReader(io.RawIOBase):
    """A zstd file of one or more frames, read as a stream, that raises `EOFError` when the last frame is cut.

    `zstandard.open` returns no bytes at all for a truncated file and says nothing: a broken file would look empty.
    """

    def __init__(self, path):
        self._file = open(path, "rb")
        self._context = zstandard.ZstdDecompressor()
        self._object = self._context.decompressobj()
        self._in_frame = False
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            chunk = self._file.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd: the file ends inside a frame (truncated)")
                return 0
            while chunk:
                self._in_frame = True
                self._buffer += self._object.decompress(chunk)
                chunk = b""
                if self._object.eof:  # the frame is complete; the rest of the chunk starts the next one
                    chunk, self._in_frame = self._object.unused_data, False
                    self._object = self._context.decompressobj()
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _open_zstd(path, mode="rb"):
    return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 20)


COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zst": _open_zstd, ".zstd": _open_zstd}
_SURROGATE = re.compile("[\ud800-\udfff]")
# UTF-32 before UTF-16: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


_PORTABLE = "fsbytes:"


def portable_unit(unit: str) -> str:
    """An input unit as text that any JSON or UTF-8 API takes (Prefect parameters, MLflow, logs): the unit itself,
    or, for a file name that is not valid UTF-8, `fsbytes:` and its bytes percent-escaped. `local_unit` undoes it."""
    try:
        unit.encode("utf-8")
        return unit
    except UnicodeEncodeError:
        return _PORTABLE + urllib.parse.quote_from_bytes(os.fsencode(unit))


def local_unit(unit: str) -> str:
    """The path (or hf: name) that `portable_unit` wrote."""
    if unit.startswith(_PORTABLE):
        return os.fsdecode(urllib.parse.unquote_to_bytes(unit[len(_PORTABLE):]))
    return unit


def display_path(path: str | Path) -> str:
    """A path as text that any UTF-8 writer accepts: the bytes of a name that is not UTF-8 shown as \\xNN."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def base_suffix(path: Path) -> tuple[str, str]:
    """(format suffix, compression suffix) of a file name like `a.jsonl.gz`."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSED else ""
    rest = suffixes[:-1] if compression else suffixes
    return (rest[-1] if rest else ""), compression


def open_binary(path: Path):
    _, compression = base_suffix(path)
    return COMPRESSED[compression](path, "rb") if compression else open(path, "rb")


def _cp1252_bytes(error: UnicodeDecodeError) -> tuple[str, int]:
    """Codec error handler: bytes that are not UTF-8 are read as cp1252 (Latin-1 for the five it leaves undefined)."""
    chunk = error.object[error.start:error.end]
    try:
        return chunk.decode("cp1252"), error.end
    except UnicodeDecodeError:
        return chunk.decode("latin-1"), error.end


codecs.register_error("bertflow.cp1252", _cp1252_bytes)
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def decode_text(data: bytes) -> tuple[str, str] | None:
    """(text, encoding) of a file's or a record's bytes, or None when they are not text.

    The rule: a byte-order mark decides (UTF-8, UTF-16 or UTF-32); else UTF-8, where each byte that is not part of
    a UTF-8 sequence is read as cp1252 (Latin-1 for the five bytes cp1252 leaves undefined). So one Latin-1 byte in
    a UTF-8 text costs nothing and leaves the text around it intact, and a Latin-1 or Windows-1252 book reads whole.
    The encoding is "utf-8", "cp1252" (no UTF-8 sequence at all) or "utf-8+cp1252". The decoded text must then
    look like text (`cleaning.looks_like_text`: no NUL, few control characters); otherwise it is binary.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                return None
            return (text, codec.removesuffix("-sig")) if looks_like_text(text) else None
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="bertflow.cp1252")
        encoding = "utf-8+cp1252" if _UTF8_MULTIBYTE.search(data) else "cp1252"
    return (text, encoding) if looks_like_text(text) else None


def scrub_surrogates(text: str) -> tuple[str, bool]:
    """Lone surrogates (a JSON "\\ud800") replaced by U+FFFD: no UTF-8 writer accepts them."""
    if _SURROGATE.search(text) is None:
        return text, False
    return _SURROGATE.sub("\ufffd", text), True


def column_spec(spec: str) -> tuple[str, tuple[str, ...]]:
    """(path, columns) of a "path::column1,column2" spec (decontamination files, task-text corpus sources); no
    columns for a plain path."""
    path, _, columns = spec.partition("::")
    return path, tuple(c for c in columns.split(",") if c)


def read_table_file(path: str | Path, *, string_columns: tuple[str, ...] = ()) -> pa.Table:
    """A whole TSV/CSV/JSONL/Parquet file (optionally gzip/bz2) as an Arrow table: task and evaluation files.

    TSV is read without quoting, as GLUE's own readers do (its fields contain bare quotes); `string_columns` are
    kept as text even when they look numeric.
    """
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


@dataclass(frozen=True)
class Question:
    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]  # gold answer texts
    answer_starts: tuple[int, ...]  # their character offsets in the context


def read_squad(path: str | Path) -> list[Question]:
    """The questions of a SQuAD-format JSON file or of a JSON-lines file (Hugging Face datasets' SQuAD rows)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    questions: list[Question] = []
    if text.lstrip().startswith("{") and '"data"' in text[:2000]:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid SQuAD JSON: {error}") from error
        for article in document.get("data", []):
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = qa.get("answers", [])
                    questions.append(Question(
                        id=str(qa["id"]), title=article.get("title", ""), context=paragraph["context"],
                        question=qa["question"], answers=tuple(a["text"] for a in answers),
                        answer_starts=tuple(int(a["answer_start"]) for a in answers)))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                answers = row.get("answers") or {"text": [], "answer_start": []}
                questions.append(Question(
                    id=str(row["id"]), title=row.get("title", ""), context=row["context"], question=row["question"],
                    answers=tuple(answers["text"]), answer_starts=tuple(int(s) for s in answers["answer_start"])))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a SQuAD row ({error!r})") from error
    if not questions:
        raise ValueError(f"{path}: no questions")
    empty = [q.id for q in questions if not q.context.strip()]
    if empty:
        raise ValueError(f"{path}: {len(empty)} question(s) with an empty context, e.g. id {empty[0]!r}")
    return questions
