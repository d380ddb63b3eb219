"""Document quality filters of the Gopher (Rae et al. 2021, Table A1) and C4 kind, each rejection counted by its
reason. Script-aware: words are whitespace tokens, and runs of CJK ideographs (written without spaces) are one
word per ideograph, as WordPiece sees them; the word-length bounds apply only to text of space-separated words, and
"a word has a letter" uses Unicode letters of any script. Gopher's English stop-word rule is left out: it would drop
every document in another language.

- Repetition (`repetition_filter`): the share of lines and of paragraphs that repeat an earlier one (by count, and
  by characters), the characters in the most frequent 2/3/4-gram of words, and the characters covered by repeated
  5..10-grams, against Gopher's thresholds.
- Non-prose (`prose_filter`): mean word length outside 3..10 characters, more than one "#" or ellipsis per ten
  words, over 90% of lines bullets or 30% ending in an ellipsis (documents of 5 lines or more), under 80% of words containing a letter, and C4's
  placeholder text ("lorem ipsum").

`python bench/quality.py` reports the share each rule drops on the shared Wikipedia extract, books and IMDb.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

REJECT_REPEATED_LINES = "repeated_lines"
REJECT_REPEATED_PARAGRAPHS = "repeated_paragraphs"
REJECT_REPEATED_NGRAMS = "repeated_ngrams"
REJECT_WORD_LENGTH = "word_length"
REJECT_SYMBOLS = "symbols"
REJECT_BULLET_LINES = "bullet_lines"
REJECT_ELLIPSIS_LINES = "ellipsis_lines"
REJECT_NON_ALPHA_WORDS = "non_alpha_words"
REJECT_PLACEHOLDER = "placeholder_text"

# Gopher, Table A1
MAX_DUPLICATE_LINE_FRACTION, MAX_DUPLICATE_LINE_CHAR_FRACTION = 0.30, 0.20
MAX_DUPLICATE_PARAGRAPH_FRACTION, MAX_DUPLICATE_PARAGRAPH_CHAR_FRACTION = 0.30, 0.20
MAX_TOP_NGRAM_CHAR_FRACTION = {2: 0.20, 3: 0.18, 4: 0.16}
MAX_DUPLICATE_NGRAM_CHAR_FRACTION = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
MEAN_WORD_CHARS = (3, 10)
MAX_SYMBOL_WORD_RATIO = 0.1
MAX_BULLET_LINE_FRACTION, MAX_ELLIPSIS_LINE_FRACTION = 0.9, 0.3
MIN_LINES_FOR_LINE_RULES = 5  # a one-line review that ends in "..." is prose, not a list of teasers
MIN_ALPHA_WORD_FRACTION = 0.8

# Scripts written without spaces between words (CJK ideographs, kana, hangul syllables): one character, one word.
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_IDEOGRAPH = re.compile(f"[{_UNSPACED}]")
_WORDS = re.compile(f"[{_UNSPACED}]|[^\\s{_UNSPACED}]+")
_BULLET = re.compile(r"^\s*[\u2022\u2023\u25e6\u2043\u2219*\-\u00b7]\s")
_ELLIPSIS = ("...", "\u2026")
_PLACEHOLDER = re.compile(r"lorem ipsum", re.I)
_WORD_WITH_LETTER = re.compile(r"^[^\n]*?[^\W\d_]", re.M)  # a line (one word) up to its first letter


def words_of(text: str) -> list[str]:
    """Whitespace-separated words, each CJK ideograph (and kana, hangul syllable) a word of its own."""
    return _WORDS.findall(text)


def _duplicates(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of the characters in them)."""
    seen, repeated, repeated_chars = set(), 0, 0
    for item in items:
        if item in seen:
            repeated, repeated_chars = repeated + 1, repeated_chars + len(item)
        seen.add(item)
    total_chars = sum(map(len, items))
    return repeated / len(items), (repeated_chars / total_chars if total_chars else 0.0)


def _ngram_hashes(ids: np.ndarray, max_n: int):
    """(n, one 64-bit hash per n-gram of word ids) for n = 1..max_n, each from the last: h_n = h_(n-1) * P + id."""
    hashes = ids.astype(np.uint64) + np.uint64(1)
    yield 1, hashes
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the hash
        for n in range(2, min(max_n, len(ids)) + 1):
            hashes = hashes[:-1] * np.uint64(0x9E3779B97F4A7C15) + ids[n - 1 :].astype(np.uint64) + np.uint64(1)
            yield n, hashes


def repetition_reason(text: str, words: list[str]) -> str | None:
    """The first Gopher repetition rule `text` breaks, or None."""
    lines = [line for line in text.split("\n") if line.strip()]
    if lines:
        share, chars = _duplicates(lines)
        if share > MAX_DUPLICATE_LINE_FRACTION or chars > MAX_DUPLICATE_LINE_CHAR_FRACTION:
            return REJECT_REPEATED_LINES
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) > 1:
        share, chars = _duplicates(paragraphs)
        if share > MAX_DUPLICATE_PARAGRAPH_FRACTION or chars > MAX_DUPLICATE_PARAGRAPH_CHAR_FRACTION:
            return REJECT_REPEATED_PARAGRAPHS
    if len(words) < 2:
        return None
    index = {w: i for i, w in enumerate(dict.fromkeys(words))}  # ids in order of first use
    ids = np.fromiter(map(index.__getitem__, words), dtype=np.int64, count=len(words))
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    total = int(lengths.sum())
    gram_chars = np.concatenate([[0], np.cumsum(lengths)])  # characters of words [i, i + n): [i + n] - [i]
    # Repeated (n+1)-grams cover a subset of the words repeated n-grams cover, so the coverage falls with n while the
    # limits fall from 0.15 to 0.10: once it is at or under the last limit, no longer n-gram can break its own.
    floor = MAX_DUPLICATE_NGRAM_CHAR_FRACTION[max(MAX_DUPLICATE_NGRAM_CHAR_FRACTION)]
    for n, grams in _ngram_hashes(ids, max(MAX_DUPLICATE_NGRAM_CHAR_FRACTION)):
        if n not in MAX_TOP_NGRAM_CHAR_FRACTION and n not in MAX_DUPLICATE_NGRAM_CHAR_FRACTION:
            continue
        order, starts = _groups(grams)
        if n in MAX_TOP_NGRAM_CHAR_FRACTION:
            counts = np.diff(np.append(starts, len(grams)))
            top = int(counts.argmax())  # the first most frequent in hash order; its occurrences have equal length
            at = int(order[starts[top]])
            if counts[top] > 1 and counts[top] * int(gram_chars[at + n] - gram_chars[at]) / total \
                    > MAX_TOP_NGRAM_CHAR_FRACTION[n]:
                return REJECT_REPEATED_NGRAMS
        else:
            first_seen = np.zeros(len(grams), dtype=bool)
            first_seen[np.minimum.reduceat(order, starts)] = True
            repeats = np.flatnonzero(~first_seen)  # n-grams seen before: the words they cover are repeated text
            if not len(repeats):
                return None
            cover = np.zeros(len(words) + 1, dtype=np.int64)
            cover[repeats] += 1  # positions are distinct, so plain indexing adds once each
            cover[repeats + n] -= 1
            share = int(lengths[np.cumsum(cover[:-1]) > 0].sum()) / total
            if share > MAX_DUPLICATE_NGRAM_CHAR_FRACTION[n]:
                return REJECT_REPEATED_NGRAMS
            if share <= floor:
                return None
    return None


def _groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(an order that sorts `values`, where each run of equal values starts in it): np.unique's groups without its
    stable sort, which its return_index needs and which is several times slower than numpy's default sort."""
    order = values.argsort()
    ordered = values[order]
    return order, np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))


def prose_reason(text: str, words: list[str]) -> str | None:
    """The first non-prose rule `text` breaks, or None."""
    if _PLACEHOLDER.search(text):
        return REJECT_PLACEHOLDER
    if not words:
        return None
    unspaced = len(_IDEOGRAPH.findall(text))  # each such character is a word of one character (words_of)
    spaced = len(words) - unspaced
    if spaced > len(words) / 2:  # mostly space-separated words: their length says something
        mean = (sum(map(len, words)) - unspaced) / spaced
        if not MEAN_WORD_CHARS[0] <= mean <= MEAN_WORD_CHARS[1]:
            return REJECT_WORD_LENGTH
    symbols = text.count("#") + sum(text.count(e) for e in _ELLIPSIS)
    if symbols / len(words) > MAX_SYMBOL_WORD_RATIO:
        return REJECT_SYMBOLS
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) >= MIN_LINES_FOR_LINE_RULES:
        if sum(bool(_BULLET.match(line)) for line in lines) / len(lines) > MAX_BULLET_LINE_FRACTION:
            return REJECT_BULLET_LINES
        if sum(line.rstrip().endswith(_ELLIPSIS) for line in lines) / len(lines) > MAX_ELLIPSIS_LINE_FRACTION:
            return REJECT_ELLIPSIS_LINES
    if (len(words) - words_without_letter(words)) / len(words) < MIN_ALPHA_WORD_FRACTION:
        return REJECT_NON_ALPHA_WORDS
    return None


def words_without_letter(words: list[str]) -> int:
    """How many of `words` have no character for which str.isalpha() holds, counted by the regex engine: the words
    one per line, and `[^\\W\\d_]` (\\w less digits and "_") is str.isalpha() once the few numerals it also takes
    (str.isnumeric() but not decimal: "²", "½", "Ⅻ") are replaced by a digit."""
    joined = "\n".join(words)
    numerals = {ord(c): "0" for c in set(joined) if c.isalnum() and not c.isalpha() and not c.isdecimal()}
    if numerals:
        joined = joined.translate(numerals)
    return len(words) - len(_WORD_WITH_LETTER.findall(joined))


def quality_reason(text: str, *, repetition: bool = True, prose: bool = True) -> str | None:
    """The reason `text` fails the enabled filters, or None when it passes."""
    if not (repetition or prose):
        return None
    words = words_of(text)
    return (repetition and repetition_reason(text, words)) or (prose and prose_reason(text, words)) or None


def reason_counts(texts, **filters) -> Counter:
    """How many of `texts` each reason rejects (None: kept)."""
    return Counter(quality_reason(t, **filters) for t in texts)
