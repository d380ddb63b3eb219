"""The Gopher/C4-style quality filters on real documents: clean Wikipedia, a book and nine scripts pass; template
residue, a list of figures and synthetic junk of each kind are rejected, each with its own reason."""

from collections import Counter
from pathlib import Path

import pytest

from bert_core.ingest.cleaning import CleaningConfig, clean_document
from bert_core.ingest.filters import quality_reason, words_of
from bert_core.ingest.sources import Document

DATA = Path(__file__).resolve().parents[1] / "data"
QUALITY = DATA / "quality"


@pytest.mark.parametrize("name", ["wikipedia-344-clean.txt", "gutenberg-108-excerpt.txt"])
def test_clean_wikipedia_and_book_text_passes(name):
    assert quality_reason((QUALITY / name).read_text()) is None


@pytest.mark.parametrize("path", sorted((DATA / "multilingual").glob("udhr-*.txt")), ids=lambda p: p.stem)
def test_every_script_passes(path):
    """Script-aware: Chinese and Japanese have no spaces (one word per ideograph, and no word-length rule), Arabic,
    Hebrew, Hindi, Persian letters count as letters."""
    assert quality_reason(path.read_text()) is None


def test_words_of_splits_ideographs_and_keeps_other_words_whole():
    assert words_of("人人生而 free  and équal") == ["人", "人", "生", "而", "free", "and", "équal"]


@pytest.mark.parametrize("name,reason", [
    ("wikipedia-1168-anaximander-template-residue.txt", "repeated_lines"),  # `#if:` lines of an unexpanded template
    ("wikipedia-1072-telecommunications-list.txt", "non_alpha_words"),  # figures, not prose
])
def test_real_junk_is_rejected_with_its_reason(name, reason):
    assert quality_reason((QUALITY / name).read_text()) == reason


BOOK = (QUALITY / "gutenberg-108-excerpt.txt").read_text()


LINES = [line for line in BOOK.split("\n") if line.strip()][:20]


@pytest.mark.parametrize("text,reason", [
    ("\n\n".join(["Click here to subscribe to our newsletter today."] * 6 + [BOOK[:400]]), "repeated_lines"),
    (BOOK[:1500] + " " + "buy cheap watches online now " * 40, "repeated_ngrams"),
])
def test_each_repetition_rule_rejects_its_kind_of_junk(text, reason):
    assert quality_reason(text) == reason


@pytest.mark.parametrize("text,reason", [
    ("\n".join("- " + line for line in LINES), "bullet_lines"),
    ("\n".join(line + " ..." if i % 2 else line for i, line in enumerate(LINES)), "ellipsis_lines"),
    (" ".join("#" + w if i % 5 == 0 else w for i, w in enumerate(BOOK[:1500].split())), "symbols"),
    ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " + BOOK[:600], "placeholder_text"),
    (" ".join(BOOK[:600].replace(" ", "")), "word_length"),  # one character per word
])
def test_each_prose_rule_rejects_its_kind_of_junk(text, reason):
    """Each rule on its own (the repetition rules off: synthetic text repeats itself)."""
    assert quality_reason(text, repetition=False) == reason


def test_a_one_line_review_ending_in_an_ellipsis_is_prose():
    review = "I waited the whole film for the twist, and it never came, so I cannot recommend it to anyone..."
    assert quality_reason(review) is None


def test_the_filters_are_counted_rejections_of_clean_document_and_spare_task_rows():
    on = CleaningConfig(repetition_filter=True, prose_filter=True)
    off = CleaningConfig(repetition_filter=False, prose_filter=False)
    repeated = "\n\n".join(["Click here to subscribe to our newsletter today."] * 6 + [BOOK[:400]])
    assert clean_document(Document(id="a", source="s", text=repeated), on) == (None, "repeated_lines")
    assert clean_document(Document(id="a", source="s", text=repeated), off)[1] is None
    # Each filter has its own switch; the non-prose rules are on by default, the repetition rules are not.
    assert clean_document(Document(id="a", source="s", text=repeated), CleaningConfig())[1] is None
    figures = (QUALITY / "wikipedia-1072-telecommunications-list.txt").read_text()
    assert clean_document(Document(id="f", source="s", text=figures), CleaningConfig())[1] == "non_alpha_words"
    book = Document(id="b", source="s", text=BOOK)
    assert clean_document(book, on)[1] is None and clean_document(book, CleaningConfig(repetition_filter=True))[1] is None
    rows = ["a gorgeous , witty film"] * 10  # a task file's rows: curated sentences, never filtered
    assert clean_document(Document(id="t", source="s", text="\n".join(rows), sentences=rows), on)[1] is None


def test_template_residue_is_removed_and_counted_and_the_article_kept():
    """Anaximander's article (shared Wikipedia extract, wiki:1168; the file holds its end) ends in the residue of
    unexpanded citation templates: "#if:" lines among others (176 in the whole article). Before cleaning removed them, the repetition rules dropped the
    article (repeated lines) and the non-prose rules too (a "#" per ten words); now its prose is kept whole, without
    them, under every filter. Prose with a stray "}}" and a book's line that starts with "|" stay; table rows go."""
    residue = (QUALITY / "wikipedia-1168-anaximander-template-residue.txt").read_text()
    assert quality_reason(residue) == "repeated_lines"  # the raw text, as the filters saw it before
    on = CleaningConfig(repetition_filter=True, prose_filter=True)
    clean, why = clean_document(Document(id="wiki:1168", source="wikipedia", text=residue), on)
    assert why is None and clean.template_lines_removed >= residue.count("\n#if:\n") > 10
    text = "\n".join(clean.sentences)
    assert "#if:" not in text and "}}{{" not in text and "| 1={{" not in text
    assert "Anaximander" in text and "pre-Socratic Greek philosopher" in text
    book = ("| 1790-1800 | 1800-1810 | 1810-1820 |\n| 27 | 33 | 29 |\n"
            "|Almustafa, the chosen and the beloved, who was a dawn unto his own day, had waited twelve years.\n"
            "The axiom of regularity enables defining the ordered pair (a, b) as {a,{a,b}}. It is a set.\n"
            "| width = 200\n}}{{\n| ()\nAnd then the city of Orphalese was in sight, and the ship came home.")
    clean, why = clean_document(Document(id="b", source="s", text=book), CleaningConfig(min_chars=50))
    assert why is None and clean.template_lines_removed == 5
    text = " ".join(clean.sentences)
    assert "Almustafa" in text and "{a,{a,b}}" in text and "Orphalese" in text and "1790" not in text
    rows = ["| width = 200 is what the critic wrote", "a gorgeous , witty film"]  # task rows are not cleaned so
    short = CleaningConfig(repetition_filter=True, min_chars=10)
    assert clean_document(Document(id="t", source="s", text="\n".join(rows), sentences=rows), short)[0].sentences \
        == tuple(rows)


def test_words_without_letter_is_str_isalpha_for_every_character():
    """The regex count of words without a letter agrees with str.isalpha() on every Unicode character, the
    numerals that \\w takes ("²", "½", "Ⅻ") included, and on words that mix them."""
    import sys

    from bert_core.ingest.filters import words_without_letter

    characters = [c for c in map(chr, range(sys.maxunicode + 1)) if not c.isspace() and not 0xD800 <= ord(c) < 0xE000]
    assert words_without_letter(characters) == sum(not c.isalpha() for c in characters)
    mixed = ["km²", "²", "½½", "Ⅻ", "x½", "1,032", "_", "__a", "٣", "3rd", "—", "ـ", "é"]
    assert words_without_letter(mixed) == sum(not any(c.isalpha() for c in w) for w in mixed) == 7


def _reference_ngram_reason(words: list[str]) -> str | None:
    """Gopher's n-gram rules written out plainly (words of one length, so that which top n-gram wins a tie does not
    matter)."""
    from bert_core.ingest.filters import MAX_DUPLICATE_NGRAM_CHAR_FRACTION, MAX_TOP_NGRAM_CHAR_FRACTION

    total = sum(map(len, words))
    for n, limit in MAX_TOP_NGRAM_CHAR_FRACTION.items():
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        if counts:
            gram, count = counts.most_common(1)[0]
            if count > 1 and count * sum(map(len, gram)) / total > limit:
                return "repeated_ngrams"
    for n, limit in MAX_DUPLICATE_NGRAM_CHAR_FRACTION.items():
        seen, covered = set(), set()
        for i in range(len(words) - n + 1):
            gram = tuple(words[i : i + n])
            if gram in seen:
                covered.update(range(i, i + n))
            seen.add(gram)
        if sum(len(words[j]) for j in covered) / total > limit:
            return "repeated_ngrams"
    return None


def test_the_ngram_rules_match_a_plain_reference_on_random_documents():
    """The vectorised rules (hashed n-grams, a cover sum, the early stop once the coverage is under the last limit)
    decide as the plain definition does, on documents from small vocabularies (much repetition) to large ones."""
    import random

    from bert_core.ingest.filters import repetition_reason

    rng, verdicts = random.Random(0), Counter()
    for trial in range(300):
        vocabulary = [f"w{i:03d}" for i in range(rng.choice([3, 8, 30, 200, 900]))]
        words = [rng.choice(vocabulary) for _ in range(rng.randint(2, 400))]
        if trial % 3 == 0:  # a repeated passage in otherwise varied text
            start = rng.randrange(len(words))
            words[start:start] = words[start : start + rng.randint(5, 40)]
        expected = _reference_ngram_reason(words)
        assert repetition_reason(" ".join(words), words) == expected, (trial, len(vocabulary), len(words))
        verdicts[expected] += 1
    assert verdicts["repeated_ngrams"] > 30 and verdicts[None] > 30  # both outcomes were tried
