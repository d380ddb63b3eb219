import pytest

from bert_core.ingest.cleaning import CleaningConfig, clean_document, normalize_text, split_sentences, strip_gutenberg
from bert_core.ingest.sources import Document
from bert_core.ingest.textfiles import decode_text


def test_strip_gutenberg_keeps_only_the_body():
    text = ("The Project Gutenberg eBook of X\nlicence words\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n"
            "Body line one.\nBody line two.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore licence\n")
    assert strip_gutenberg(text).strip() == "Body line one.\nBody line two."
    assert strip_gutenberg("no markers here") == "no markers here"


def test_normalize_text_drops_controls_and_collapses_spaces():
    assert normalize_text("Cafe\u0301\x00  bar\r\n\tbaz\u200b ") == "Café bar\nbaz"


@pytest.mark.parametrize("splitter", ["blingfire", "regex"])
def test_split_sentences_respects_abbreviations_initials_and_paragraphs(splitter):
    text = "Dr. Smith met Mr. J. R. Jones in the U.S. capital. They talked! Did it work? Yes.\n\nNew paragraph here"
    assert split_sentences(text, splitter=splitter) == [
        "Dr. Smith met Mr. J. R. Jones in the U.S. capital.",
        "They talked!",
        "Did it work?",
        "Yes.",
        "New paragraph here",
    ]


@pytest.mark.parametrize("splitter", ["blingfire", "regex"])
def test_split_sentences_keeps_closing_quotes_with_their_sentence(splitter):
    assert split_sentences('He said "stop." Then he left.', splitter=splitter) == ['He said "stop."', "Then he left."]


def test_unknown_splitter_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown sentence_splitter"):
        split_sentences("A. B.", splitter="magic")


@pytest.mark.parametrize("doc,reason", [
    (Document(id="c", source="s", text="too short."), "too_short"),
    (Document(id="d", source="s", text="1234567890 " * 50), "mostly_non_text"),
    (Document(id="e", source="s", error="binary_file"), "binary_file"),  # the reader's reason is the rejection
    (Document(id="f", source="s", text="   \n\n  "), "empty"),
    (Document(id="g", source="s", text="word " * 60), "too_few_sentences"),
    (Document(id="j", source="s", text="x" * 300), "empty"),  # one 300-character "word": removed, nothing left
    (Document(id="h", source="s", text="Long text. " * 30), "too_long"),
    (Document(id="i", source="s", skip="wiki_redirect"), "wiki_redirect"),
])
def test_each_rejection_has_its_reason(doc, reason):
    clean, why = clean_document(doc, CleaningConfig(max_chars=200 if doc.id == "h" else 20_000_000))
    assert clean is None and why == reason


def test_clean_document_keeps_good_text():
    clean, why = clean_document(Document(id="a", source="s", text="This is a perfectly fine sentence about cats. " * 10),
                                CleaningConfig())
    assert why is None and len(clean.sentences) == 10


def test_words_longer_than_wordpiece_takes_are_removed_and_counted():
    """A 400k-character "word" (a base64 blob, a run of letters) costs the tokenizer trainer a minute and would be one
    [UNK]; cleaning removes runs of word characters over max_word_chars and counts them. CJK text, which has no
    spaces, is not a long word (WordPiece sees each ideograph as a word)."""
    body = "This is a perfectly fine sentence about cats. " * 10
    doc = Document(id="a", source="s", text=body + "Then " + "q" * 400_000 + " ends. And a" + "b" * 99 + " stays.")
    clean, why = clean_document(doc, CleaningConfig())
    assert why is None and clean.long_words_removed == 1
    assert max(len(w) for s in clean.sentences for w in s.split()) == 100  # "a" + 99 b's: at the cap, kept
    chinese = "人人生而自由，在尊严和权利上一律平等。" * 20
    clean, why = clean_document(Document(id="z", source="s", text=chinese), CleaningConfig(min_sentences=1))
    assert why is None and clean.long_words_removed == 0 and "".join(clean.sentences) == chinese
    # Kept whole under a larger cap (the non-prose rules would then reject it: its mean word length runs into thousands).
    kept = clean_document(doc, CleaningConfig(max_word_chars=500_000, prose_filter=False))[0]
    assert kept.long_words_removed == 0
    assert clean_document(doc, CleaningConfig(max_word_chars=500_000)) == (None, "word_length")


def test_cp1252_c1_controls_are_repaired_and_counted_not_dropped():
    # IMDb train/pos/8863_8 (3% of IMDb's reviews are like it): cp1252 "…" and "—" stored as U+0085 and U+0097.
    # Dropped as controls, they glued sentences together; counted as binary, they rejected the review.
    text = ("After a cold sex scene, we know that Andy is a payroll manager who badly needs some extra money\x85 We "
            "also discover that he has been stealing from his job\x85 He persuades his brother\x97a likable loser\x97"
            "to join him in a plan to steal from their own parents' small store. The years 1990\x962000 went by.")
    assert decode_text(text.encode("utf-8")) == (text, "utf-8")  # text, not binary_file
    clean, reason = clean_document(Document(id="r", source="imdb", text=text), CleaningConfig())
    assert reason is None and clean.c1_controls_repaired == 5
    joined = " ".join(clean.sentences)
    assert "money… We" in joined and "brother—a likable loser—to" in joined and "1990–2000" in joined
    assert split_sentences(joined)[0].endswith("money…")
    # Random bytes are still binary, and the C1 controls cp1252 leaves undefined stay controls.
    assert decode_text(bytes(range(256)) * 8) is None
    assert normalize_text("a\x81b\x9dc") == "abc"
