import pytest
from transformers import AutoTokenizer

from bert_core.tokenizer import (
    SPECIAL_TOKENS,
    TokenizerConfig,
    continuation_mask,
    load_tokenizer,
    tokenizer_hash,
    train_tokenizer,
)

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Foxes are quick; dogs are lazy.",
         "A completely different sentence about tokenization and subwords."] * 50


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1))


def test_special_tokens_have_fixed_ids(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id) == (0, 2, 3, 4)


def test_pair_encoding_has_bert_layout(tokenizer):
    enc = tokenizer("quick fox", "lazy dog")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    first_sep = tokens.index("[SEP]")
    assert set(enc["token_type_ids"][: first_sep + 1]) == {0} and set(enc["token_type_ids"][first_sep + 1 :]) == {1}


def test_save_and_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert tokenizer_hash(loaded) == tokenizer_hash(tokenizer)
    vanilla = AutoTokenizer.from_pretrained(tmp_path / "tok")  # plain transformers, no bertflow code
    assert vanilla("the lazy dog")["input_ids"] == tokenizer("the lazy dog")["input_ids"]


def test_load_vocab_txt(tokenizer, tmp_path):
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (tmp_path / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in vocab))
    loaded = load_tokenizer(tmp_path / "vocab.txt")
    assert len(loaded) == len(tokenizer)
    assert loaded("the quick fox")["input_ids"] == tokenizer("the quick fox")["input_ids"]


def test_continuation_mask_marks_word_pieces(tokenizer):
    mask = continuation_mask(tokenizer)
    vocab = tokenizer.get_vocab()
    assert mask.sum() == sum(tok.startswith("##") for tok in vocab)
    assert not mask[:5].any()


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)
