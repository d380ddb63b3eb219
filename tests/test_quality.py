"""The Gopher/C4-style quality filters on real documents: clean Wikipedia, a book and nine scripts pass; template
residue, a list of figures and synthetic junk of each kind are rejected, each with its own reason."""

from pathlib import Path

import pytest

from bert_core.cleaning import CleaningConfig, clean_document
from bert_core.corpus import Document
from bert_core.quality import quality_reason, words_of

DATA = Path(__file__).resolve().parent / "data"
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
    residue = (QUALITY / "wikipedia-1168-anaximander-template-residue.txt").read_text()
    on = CleaningConfig(repetition_filter=True, prose_filter=True)
    assert clean_document(Document(id="a", source="s", text=residue), on) == (None, "repeated_lines")
    assert clean_document(Document(id="a", source="s", text=residue), CleaningConfig())[1] is None  # off by default
    # Each filter has its own switch: the residue's "#if:" lines are also symbols to the non-prose rules.
    assert clean_document(Document(id="a", source="s", text=residue), CleaningConfig(prose_filter=True))[1] == "symbols"
    book = Document(id="b", source="s", text=BOOK)
    assert clean_document(book, on)[1] is None and clean_document(book, CleaningConfig(repetition_filter=True))[1] is None
    rows = ["a gorgeous , witty film"] * 10  # a task file's rows: curated sentences, never filtered
    assert clean_document(Document(id="t", source="s", text="\n".join(rows), sentences=rows), on)[1] is None
