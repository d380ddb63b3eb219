"""Text cleaning: normalise, filter, deduplicate and split documents into sentences.

Every document that does not survive is counted under one reason, so that `read == kept + sum(rejected)` holds
for every run and a user can see why text went missing. The sentence splitter is a rule-based one that needs no
model download (it must work offline); it splits after `.`, `!` or `?` (plus closing quotes or brackets) when the
next word starts like a sentence, and not after common abbreviations or single-letter initials.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

REJECT_READ_ERROR = "read_error"
REJECT_EMPTY = "empty"
REJECT_TOO_SHORT = "too_short"
REJECT_TOO_LONG = "too_long"
REJECT_NOT_TEXT = "mostly_non_text"
REJECT_FEW_SENTENCES = "too_few_sentences"
REJECT_DUPLICATE = "exact_duplicate"


@dataclass(frozen=True, kw_only=True)
class CleaningConfig:
    min_chars: int = 200
    max_chars: int = 20_000_000
    min_alpha_fraction: float = 0.6
    min_sentences: int = 2
    min_sentence_chars: int = 2
    deduplicate: bool = True
    strip_gutenberg: bool = True


@dataclass(frozen=True, kw_only=True)
class CleanDocument:
    id: str
    source: str
    sentences: tuple[str, ...]


_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG EBOOK[^\n]*\*\*\*\s*$", re.I | re.M)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG EBOOK[^\n]*\*\*\*\s*$", re.I | re.M)
# C0/C1 control characters other than tab and newline, plus zero-width and BOM characters.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "no", "vs", "etc", "e.g", "i.e", "cf", "al",
    "gen", "col", "lt", "sgt", "capt", "gov", "rev", "hon", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "approx", "ca", "fig", "vol", "ed", "inc", "ltd", "co", "corp", "u.s", "u.k",
}
# A candidate boundary: terminal punctuation, optional closing quotes/brackets, whitespace, then something that can
# open a sentence (capital letter, digit, opening quote or bracket).
_BOUNDARY = re.compile(r"([.!?]+[\"'\u201d\u2019)\]]*)\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")


def strip_gutenberg(text: str) -> str:
    """Keep only the body between Project Gutenberg's START and END markers (the text unchanged if absent)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def normalize_text(text: str) -> str:
    """NFC-normalise, drop control characters, unify newlines and collapse runs of spaces."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


def split_sentences(text: str, *, min_sentence_chars: int = 2) -> list[str]:
    """Split normalised text into sentences; paragraphs (blank-line separated) never share a sentence."""
    sentences: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        start = 0
        for match in _BOUNDARY.finditer(paragraph):
            end = match.end(1)
            candidate = paragraph[start:end]
            last_word = candidate.rstrip(".!?\"'\u201d\u2019)]").rsplit(" ", 1)[-1].lower()
            if match.group(1).startswith(".") and (last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha())):
                continue
            sentences.append(candidate.strip())
            start = match.end()
        sentences.append(paragraph[start:].strip())
    return [s for s in sentences if len(s) >= min_sentence_chars]


def _alpha_fraction(text: str) -> float:
    if not text:
        return 0.0
    letters = sum(ch.isalpha() or ch.isspace() for ch in text)
    return letters / len(text)


def clean_documents(
    documents: Iterable, config: CleaningConfig, rejected: Counter, seen_hashes: set[str] | None = None
) -> Iterator[CleanDocument]:
    """Yield cleaned, sentence-split documents; count each rejected one under `rejected[reason]`.

    `documents` yields `corpus.Document`s. `seen_hashes` carries exact-dedup state across calls so that duplicates
    are found across the whole corpus, not per file.
    """
    seen = seen_hashes if seen_hashes is not None else set()
    for doc in documents:
        if doc.error:
            rejected[REJECT_READ_ERROR] += 1
            continue
        text = doc.text
        if len(text) > config.max_chars:
            rejected[REJECT_TOO_LONG] += 1
            continue
        if config.strip_gutenberg:
            text = strip_gutenberg(text)
        text = normalize_text(text)
        if not text:
            rejected[REJECT_EMPTY] += 1
            continue
        if len(text) < config.min_chars:
            rejected[REJECT_TOO_SHORT] += 1
            continue
        if _alpha_fraction(text) < config.min_alpha_fraction:
            rejected[REJECT_NOT_TEXT] += 1
            continue
        if config.deduplicate:
            digest = hashlib.sha1(" ".join(text.lower().split()).encode("utf-8")).hexdigest()
            if digest in seen:
                rejected[REJECT_DUPLICATE] += 1
                continue
            seen.add(digest)
        sentences = split_sentences(text, min_sentence_chars=config.min_sentence_chars)
        if len(sentences) < config.min_sentences:
            rejected[REJECT_FEW_SENTENCES] += 1
            continue
        yield CleanDocument(id=doc.id, source=doc.source, sentences=tuple(sentences))
