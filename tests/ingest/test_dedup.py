import numpy as np

from bert_core.ingest.decontamination import ContaminationIndex, read_eval_texts
from bert_core.ingest.dedup import DedupConfig, NearDuplicateIndex, minhash_signature, normalized_words, word_hashes
from bert_core.ingest.sources import SAMPLE_DIR

BASE = ("The committee met on Tuesday to discuss the new budget for the city schools. After a long debate about "
        "class sizes, bus routes and the state of the old gymnasium, the members voted to raise teacher salaries by "
        "four percent over the next two years while cutting administrative costs at the district office. The mayor "
        "welcomed the decision, saying that good teachers were the backbone of any town, and promised to find the "
        "money for repairs to the library roof before the winter storms arrive in November.")


def _sig(text, config=DedupConfig()):
    return minhash_signature(word_hashes(normalized_words(text)), config)


def test_normalized_words_undo_ptb_tokenization():
    assert normalized_words("it 's a do n't -- film") == normalized_words("It's a don't film!")


def test_near_duplicates_are_found_and_different_texts_are_not():
    index = NearDuplicateIndex(DedupConfig())
    assert not index.seen_before("a", _sig(BASE))
    edited = BASE.replace("Tuesday", "Wednesday")
    assert index.seen_before("b", _sig(edited))  # a light edit is a near duplicate
    other = "a completely different article about volcanoes erupting in iceland during the winter months " * 3
    assert not index.seen_before("c", _sig(other))


def test_signatures_are_deterministic():
    assert (_sig(BASE) == _sig(BASE)).all() and _sig(BASE).dtype == np.uint64


def test_contamination_index_finds_eval_ngrams():
    sentence = "a gorgeous , witty , seductive movie that never loses its sense of humor or its heart ."
    index = ContaminationIndex([sentence, "too short"], DedupConfig())
    assert index.texts == 2 and index.too_short == 1
    document = "Critics agreed: a gorgeous, witty, seductive movie that never loses its sense of humor or its heart!"
    assert index.overlaps(word_hashes(normalized_words(document))) > 0
    assert index.overlaps(word_hashes(normalized_words(BASE))) == 0


def test_short_eval_texts_are_matched_whole():
    index = ContaminationIndex(["the film is a dull and lifeless mess"], DedupConfig())  # 8 words < 13
    assert index.overlaps(word_hashes(normalized_words("Sadly, the film is a dull and lifeless mess."))) == 1


def test_read_eval_texts_from_the_bundled_sst2_dev():
    texts = read_eval_texts(str(SAMPLE_DIR / "sst2" / "dev.tsv"))
    assert len(texts) == 872 and texts[0].startswith("it 's a charming and often affecting journey")
