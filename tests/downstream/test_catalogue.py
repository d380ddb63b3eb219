"""The task catalogue: built-in entries, user tasks from JSON/YAML files or $BERTFLOW_HOME/tasks, clear errors."""

import json
from pathlib import Path

import pytest

from bert_core.config import ConfigError
from bert_core.downstream.catalogue import BUILTIN, SAMPLE_DIR, get_task, load_task_file
from bert_core.downstream.kinds import CONLL2003_TAGS


def test_builtin_tasks_carry_their_columns_labels_metric_and_samples():
    mrpc = get_task("mrpc")
    assert mrpc.model_kind == "classifier" and mrpc.primary_metric == "eval_accuracy"
    assert mrpc.config_fields() == {"text_column": "#1 String", "text_pair_column": "#2 String",
                                            "label_column": "Quality", "label_names": ("not_paraphrase", "paraphrase"),
                                            "truncation": "head", "metric_for_best_model": "f1"}
    assert mrpc.files() == (str(SAMPLE_DIR / "mrpc" / "train.tsv"), str(SAMPLE_DIR / "mrpc" / "dev.tsv"))
    assert mrpc.decontamination_specs("dev.tsv") == ["dev.tsv::#1 String,#2 String"]
    assert get_task("imdb").truncation == "head_tail"
    squad = get_task("squad")
    assert (squad.model_kind, squad.primary_metric, squad.task_kind.max_seq_length) == ("question-answering", "eval_f1", 384)
    assert squad.decontamination_specs("dev.json") == ["dev.json::context"]
    conll = get_task("conll2003")
    assert conll.model_kind == "token-classifier" and conll.label_names == CONLL2003_TAGS
    assert conll.decontamination_specs("valid.txt") == []  # one word per line: nothing to match
    with pytest.raises(ConfigError, match="ships no sample"):
        conll.files()
    assert get_task("sst2").files("a.tsv", "b.tsv") == ("a.tsv", "b.tsv")
    for task in BUILTIN.values():  # every bundled sample exists
        if task.train_file:
            assert all(Path(f).is_file() for f in task.files())


def test_a_task_of_a_known_kind_is_a_small_file(tmp_path, monkeypatch):
    entry = {"name": "reviews", "kind": "pair", "text_column": "a", "text_pair_column": "b", "label_column": "y",
             "label_names": ["no", "yes"], "train_file": "/data/train.tsv", "validation_file": "/data/dev.tsv"}
    (tmp_path / "tasks.json").write_text(json.dumps([entry, {**entry, "name": "other"}]))
    task = get_task("reviews", str(tmp_path / "tasks.json"))
    assert task.label_names == ("no", "yes") and task.files() == ("/data/train.tsv", "/data/dev.tsv")
    assert task.decontamination_specs("/data/dev.tsv") == ["/data/dev.tsv::a,b"]
    (tmp_path / "ner.yaml").write_text("name: my-ner\nkind: token\nlabel_names: [O, B-X, I-X]\n")
    assert load_task_file(tmp_path / "ner.yaml")[0].label_names == ("O", "B-X", "I-X")
    # A file under $BERTFLOW_HOME/tasks/ is found by name, where every worker can read it.
    monkeypatch.setenv("BERTFLOW_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "tasks").mkdir(parents=True)
    (tmp_path / "home" / "tasks" / "headlines.yaml").write_text("name: headlines\nkind: sentence\ntext_column: title\n")
    assert get_task("headlines").text_column == "title"
    assert get_task("anything-else").kind == "sentence"  # columns then come from the caller


@pytest.mark.parametrize("content,message", [
    ({"name": "x", "kind": "regression"}, "Task.kind is 'regression'; expected one of 'sentence', 'pair'"),
    ({"name": "x", "kind": "pair"}, "of kind 'pair'; expected a text_pair_column"),
    ({"name": "x", "kind": "sentence", "train_file": "t.tsv"}, "give both train_file and validation_file"),
    ({"name": "x", "kind": "sentence", "colour": "red"}, "unknown Task field(s) ['colour']"),
    ({"kind": "sentence"}, "expected at least name and kind"),
    ({"name": "x", "kind": "sentence", "label_names": "good"}, "Task.label_names is 'good' (str)"),
])
def test_a_bad_task_file_is_one_clear_error(tmp_path, content, message):
    (tmp_path / "t.json").write_text(json.dumps(content))
    with pytest.raises(ConfigError) as error:
        load_task_file(tmp_path / "t.json")
    assert message in str(error.value) and str(tmp_path / "t.json") in str(error.value)


def test_a_task_file_without_the_task_says_what_it_has(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"name": "a", "kind": "sentence"}))
    with pytest.raises(ConfigError, match=r"defines \['a'\], not 'b'"):
        get_task("b", str(tmp_path / "t.json"))
