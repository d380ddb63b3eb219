import json

import pytest
from transformers import AutoModelForSequenceClassification

from bert_core.corpus import SAMPLE_DIR
from bert_core.finetune import FinetuneConfig, finetune, read_labelled_texts

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
    assert sum(map(sum, summary["eval_confusion_matrix"])) == 872
    model = AutoModelForSequenceClassification.from_pretrained(summary["final_dir"])
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_labels_out_of_range_are_refused(pretrained, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\nfine\t0\nodd\t2\n")
    with pytest.raises(ValueError, match="labels must lie in"):
        finetune(FinetuneConfig(model_name_or_path=pretrained["final_dir"], train_file=str(bad),
                                validation_file=str(bad), output_dir=str(tmp_path / "x")))
