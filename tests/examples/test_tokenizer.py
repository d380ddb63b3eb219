import pytest
from transformers import AutoTokenizer

from bert_core.examples.tokenizer import (SPECIAL_TOKENS, TokenizerConfig, continuation_mask, load_tokenizer,
    tokenizer_hash, train_tokenizer)

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


def test_the_hash_is_the_same_for_the_backend_a_data_stage_saved_and_for_transformers_loading_it(tokenizer, tmp_path):
    """The shards' manifest hashes the backend; an encoder's tokenizer is loaded by transformers, which lists the
    special tokens as added tokens: both must give one hash, or a reused tokenizer looks like another one (and the
    MLM-loss gate, which compares encoders of one tokenizer only, would refuse continued pretraining)."""
    from bert_core.examples.tokenizer import load_backend, save_tokenizer

    save_tokenizer(tokenizer.backend_tokenizer, tmp_path / "stage")
    backend = load_backend(tmp_path / "stage")
    assert tokenizer_hash(backend) == tokenizer_hash(load_tokenizer(tmp_path / "stage")) == tokenizer_hash(tokenizer)
    other = train_tokenizer(["Zebras graze on wide savannahs, unhurried."] * 20, TokenizerConfig(vocab_size=300,
                                                                                                 min_frequency=1))
    assert tokenizer_hash(backend) != tokenizer_hash(other)


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


def test_the_trained_vocabulary_and_shards_are_the_same_in_two_separate_processes(tmp_path):
    """Two fresh `examples` runs (separate processes, token directories and BERTFLOW_HOMEs) over the same documents
    give the same vocabulary and byte-identical shards. The corpus mixes English with nine scripts, so the alphabet
    cut (limit_alphabet) falls among characters of equal count: `tokenizers` used to keep a different set of them,
    and number continuation pieces differently, in every process (~130 of 30,522 tokens differed)."""
    import json
    import os
    import subprocess
    import sys

    from bert_core.ingest.cleaning import CleaningConfig
    from bert_core.ingest.corpus import IngestConfig, ingest_corpus
    from bert_core.ingest.sources import SAMPLE_SOURCES
    from tests.conftest import REPO

    multilingual = str(REPO / "tests" / "data" / "multilingual" / "udhr-*.txt")
    documents = ingest_corpus(IngestConfig(sources=(*SAMPLE_SOURCES, multilingual), validation_fraction=0.1,
                                           cleaning=CleaningConfig(min_chars=100)), tmp_path / "documents")
    config = tmp_path / "examples.json"
    config.write_text(json.dumps({"max_seq_length": 64, "tokenizer": {"vocab_size": 3000, "limit_alphabet": 200}}))
    results = []
    for run in ("a", "b"):
        out = tmp_path / run
        env = {**os.environ, "BERTFLOW_HOME": str(out / "home"), "PYTHONHASHSEED": "random"}
        done = subprocess.run([sys.executable, "-m", "bert_core", "examples", "--config", str(config),
                               "--documents-dir", str(documents), "--output-dir", str(out / "examples"),
                               "--tokens-dir", str(out / "tokens"), "--workers", "1"],
                              cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        vocab = json.loads((out / "examples" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
        shards = {split: json.loads((out / "examples" / split / "manifest.json").read_text())
                  for split in ("train", "validation")}
        results.append((vocab, {s: [f["sha256"] for f in m["shards"]] for s, m in shards.items()}))
    (vocab_a, shards_a), (vocab_b, shards_b) = results
    assert len(vocab_a) == 3000
    assert sorted(set(vocab_a) ^ set(vocab_b)) == [] and vocab_a == vocab_b
    assert shards_a == shards_b
