from collections import Counter

from bert_core.cleaning import (
    CleaningConfig,
    clean_documents,
    normalize_text,
    split_sentences,
    strip_gutenberg,
)
from bert_core.corpus import Document


def test_strip_gutenberg_keeps_only_the_body():
    text = ("The Project Gutenberg eBook of X\nlicence words\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n"
            "Body line one.\nBody line two.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore licence\n")
    assert strip_gutenberg(text).strip() == "Body line one.\nBody line two."
    assert strip_gutenberg("no markers here") == "no markers here"


def test_normalize_text_drops_controls_and_collapses_spaces():
    assert normalize_text("Cafe\u0301\x00  bar\r\n\tbaz\u200b ") == "Café bar\nbaz"


def test_split_sentences_respects_abbreviations_initials_and_paragraphs():
    text = "Dr. Smith met Mr. J. R. Jones in the U.S. capital. They talked! Did it work? Yes.\n\nNew paragraph here"
    assert split_sentences(text) == [
        "Dr. Smith met Mr. J. R. Jones in the U.S. capital.",
        "They talked!",
        "Did it work?",
        "Yes.",
        "New paragraph here",
    ]


def test_split_sentences_keeps_closing_quotes_with_their_sentence():
    assert split_sentences('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]


def test_clean_documents_counts_every_rejection():
    long_text = "This is a perfectly fine sentence about cats. " * 10
    docs = [
        Document(id="a", source="s", text=long_text),
        Document(id="b", source="s", text=long_text.upper().lower()),  # duplicate after normalisation
        Document(id="c", source="s", text="too short."),
        Document(id="d", source="s", text="1234567890 " * 50),
        Document(id="e", source="s", error="UnicodeDecodeError"),
        Document(id="f", source="s", text="   \n\n  "),
        Document(id="g", source="s", text="x" * 300),  # one "sentence"
    ]
    rejected = Counter()
    kept = list(clean_documents(docs, CleaningConfig(), rejected))
    assert [d.id for d in kept] == ["a"]
    assert len(kept[0].sentences) == 10
    assert rejected == Counter(exact_duplicate=1, too_short=1, mostly_non_text=1, read_error=1, empty=1,
                               too_few_sentences=1)
    assert len(kept) + sum(rejected.values()) == len(docs)


def test_dedup_state_spans_calls():
    text = "A sentence that repeats across files. And another one follows it here. " * 4
    seen, rejected = set(), Counter()
    first = list(clean_documents([Document(id="1", source="f1", text=text)], CleaningConfig(), rejected, seen))
    second = list(clean_documents([Document(id="2", source="f2", text=text)], CleaningConfig(), rejected, seen))
    assert len(first) == 1 and second == [] and rejected["exact_duplicate"] == 1
