"""The downstream suite: both arms fine-tuned under one protocol, a real random-init twin, its runs cached."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bert_core import stage
from bert_core.config import ConfigError
from bert_core.downstream.catalogue import get_task
from bert_core.downstream.suite import SuiteConfig, compare, paired_p_value, run_suite, summary_line
from tests.conftest import REPO


@pytest.fixture(scope="module")
def reports(pretrained, tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    config = SuiteConfig(encoder=pretrained["final_dir"], output_dir=str(root / "a"), size="tiny", max_seq_length=64,
                         max_train_steps=10, twin_dir=str(root / "twins"))
    first = run_suite(config)
    # Another encoder of the same architecture and tokenizer (next week's, in another directory): the twin's runs
    # are all reused.
    another = shutil.copytree(pretrained["final_dir"], root / "next-week" / "final")
    second = run_suite(SuiteConfig(**{**config.__dict__, "encoder": str(another), "output_dir": str(root / "b")}))
    return first, second


def test_the_suite_runs_both_arms_and_reports_the_difference(reports, pretrained):
    first, _ = reports
    (row,) = first["tasks"]
    assert row["task"] == "sst2" and row["metric"] == "eval_accuracy" and row["seeds"] == [0, 1]
    assert len(row["pretrained_scores"]) == len(row["twin_scores"]) == 2
    assert all(0 <= s <= 1 for s in row["pretrained_scores"] + row["twin_scores"])
    assert row["delta"] == pytest.approx(row["pretrained_mean"] - row["twin_mean"])
    assert first["suite_delta"] == pytest.approx(row["delta"])
    assert summary_line(first).startswith("suite: pretrained vs random init: SST2 ") and "(2 seeds)" in summary_line(first)


def test_the_twin_is_the_encoders_architecture_with_fresh_weights(reports, pretrained):
    first, _ = reports
    twin, encoder = load_file(f"{first['twin']}/model.safetensors"), load_file(f"{pretrained['final_dir']}/model.safetensors")
    assert twin.keys() == encoder.keys()
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert twin[name].shape == encoder[name].shape and not torch.equal(twin[name], encoder[name])
    assert json.loads(open(f"{first['twin']}/config.json").read())["hidden_size"] == \
        json.loads(open(f"{pretrained['final_dir']}/config.json").read())["hidden_size"]


def test_the_twin_runs_are_cached(reports):
    first, second = reports
    assert first["twin_runs_reused"] == 0 and second["twin_runs_reused"] == 2
    assert second["tasks"][0]["twin_scores"] == first["tasks"][0]["twin_scores"]


def test_paired_p_value():
    assert paired_p_value([0.8, 0.82, 0.81], [0.70, 0.71, 0.69]) < 0.01
    assert math.isnan(paired_p_value([0.8], [0.7]))  # one pair says nothing
    assert math.isnan(paired_p_value([0.8, 0.9], [0.7, 0.8]))  # no spread in the differences


def test_the_cli_writes_the_report(reports, tmp_path):
    first, _ = reports
    config = {"encoder": first["encoder"], "output_dir": str(tmp_path / "cli"), "size": "tiny", "max_seq_length": 64,
              "max_train_steps": 10, "twin_dir": str(Path(first["twin"]).parents[1])}
    (tmp_path / "suite.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "bert_core", "suite", "--config", str(tmp_path / "suite.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "suite: pretrained vs random init: SST2" in done.stderr
    report = stage.read_json(tmp_path / "cli" / "report.json")
    assert report["twin_runs_reused"] == 2 and (tmp_path / "cli" / "report.md").read_text().count("| sst2 |") == 1


def test_each_task_is_scored_by_the_metric_that_picks_its_checkpoint():
    from bert_core.downstream.catalogue import get_task
    from bert_core.downstream.suite import suite_metric

    assert suite_metric(get_task("sst2")) == "eval_accuracy" and suite_metric(get_task("mrpc")) == "eval_f1"


def test_ner_runs_in_the_suite_from_a_data_directory(pretrained, tmp_path):
    """A token-classification task (CoNLL-2003 layout, entity F1) from a ../shared/data/tasks-style folder."""
    from tests.downstream.test_ner import SENTENCES, write_conll

    (tmp_path / "data" / "conll2003").mkdir(parents=True)
    write_conll(tmp_path / "data" / "conll2003" / "train.txt", SENTENCES, repeat=8)
    write_conll(tmp_path / "data" / "conll2003" / "valid.txt", SENTENCES, repeat=2)
    report = run_suite(SuiteConfig(encoder=pretrained["final_dir"], output_dir=str(tmp_path / "out"), size="tiny",
                                   tasks=("conll2003",), data_dir=str(tmp_path / "data"), max_seq_length=64,
                                   max_train_steps=6, twin_dir=str(tmp_path / "twins")))
    (row,) = report["tasks"]
    assert row["metric"] == "eval_f1" and row["train_examples"] == 48 and row["validation_examples"] == 12
    assert row["majority_baseline"] == 0.0  # tagging every token O finds no entity
    assert all(0 <= s <= 1 for s in row["pretrained_scores"] + row["twin_scores"])
    assert (tmp_path / "out" / "report.png").stat().st_size > 5000
    # The default size adds NER when the data directory holds CoNLL-2003; full needs one.
    with_data = SuiteConfig(encoder="x", output_dir="y", data_dir=str(tmp_path / "data")).protocol()["tasks"]
    assert with_data == ("sst2", "mrpc", "conll2003") and SuiteConfig(encoder="x", output_dir="y").protocol()["tasks"] == ("sst2", "mrpc")
    with pytest.raises(ConfigError, match="give data_dir"):
        SuiteConfig(encoder="x", output_dir="y", size="full")
    with pytest.raises(ConfigError, match="no .*sst2/train.tsv"):
        SuiteConfig(encoder="x", output_dir="y", size="full", data_dir=str(tmp_path / "data")).task_files(get_task("sst2"))


def test_the_report_names_each_task_s_majority_class_score():
    """MRPC's F1 rewards saying "paraphrase" to everything: the report gives that floor beside both arms."""
    import csv

    from bert_core.downstream.catalogue import get_task
    from bert_core.downstream.suite import _task_facts, render_report

    task = get_task("mrpc")
    train, dev = task.files()

    def labels(path):
        with open(path, encoding="utf-8-sig") as f:
            return [int(row["Quality"]) for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]

    majority = max((0, 1), key=labels(train).count)
    dev_labels = labels(dev)
    hits = sum(label == majority == 1 for label in dev_labels)
    expected = 2 * hits / (dev_labels.count(1) + (len(dev_labels) if majority == 1 else 0)) if hits else 0.0
    facts = _task_facts(task, (train, dev))
    assert facts["majority_baseline"] == pytest.approx(expected) and 0.5 < expected < 1
    row = {"task": "mrpc", "metric": "eval_f1", "train_examples": 1, "validation_examples": 1, "pretrained_mean": 0.8,
           "pretrained_std": 0.0, "twin_mean": 0.8, "twin_std": 0.0, "delta": 0.0, "paired_p_value": float("nan"),
           "majority_baseline": facts["majority_baseline"]}
    text = render_report({"tasks": [row], "protocol": {"seeds": [0]}, "suite_score": 0.8, "twin_suite_score": 0.8})
    assert f"| eval_f1 | {expected:.4f} | 0.8000 +- 0.0000 |" in text
    # Both arms within half a point of that floor: the summary line says so; above it, it does not.
    floor = {**row, "pretrained_mean": expected + 0.004, "twin_mean": expected - 0.01}
    line = summary_line({"tasks": [floor], "protocol": {"seeds": [0]}})
    assert line.endswith("(1 seeds); both arms at the majority-class score: MRPC")
    learned = {**floor, "pretrained_mean": expected + 0.006}
    assert summary_line({"tasks": [learned], "protocol": {"seeds": [0]}}).endswith("(1 seeds)")


def _report(scores_by_task: dict[str, list[float]]) -> dict:
    rows = [{"task": t, "pretrained_scores": s, "pretrained_mean": sum(s) / len(s)} for t, s in scores_by_task.items()]
    return {"tasks": rows, "protocol": {"seeds": [0, 1, 2]},
            "suite_score": sum(r["pretrained_mean"] for r in rows) / len(rows)}


def test_compare_pairs_the_per_seed_suite_scores():
    candidate = _report({"sst2": [0.80, 0.82, 0.81], "mrpc": [0.70, 0.72, 0.71]})
    champion = _report({"sst2": [0.75, 0.76, 0.74], "mrpc": [0.69, 0.70, 0.70]})
    result = compare(candidate, champion)
    assert result["suite_gain"] == pytest.approx(candidate["suite_score"] - champion["suite_score"])
    assert result["paired_p_value"] == pytest.approx(paired_p_value([0.75, 0.77, 0.76], [0.72, 0.73, 0.72]))
    with pytest.raises(ValueError, match="different tasks or seeds"):
        compare(candidate, _report({"sst2": [0.8, 0.8, 0.8]}))


def test_the_encoder_gate_refuses_a_lower_suite_score_and_keeps_the_p_value(pretrained, tmp_path):
    import shutil

    from mlflow.tracking import MlflowClient

    from bert_core.registry.registration import RegisterConfig, register_model

    dirs = []
    for name in ("champion", "candidate"):
        shutil.copytree(pretrained["final_dir"], tmp_path / name)
        (tmp_path / name / "MARKER").write_text(name)
        dirs.append(str(tmp_path / name))
    base = dict(registered_model_name="gate-test", home=str(tmp_path / "home"), primary_metric="suite_score")
    first = register_model(RegisterConfig(model_dir=dirs[0], metrics={"suite_score": 0.75}, **base))
    assert first["promoted"]
    weaker = register_model(RegisterConfig(model_dir=dirs[1], metrics={"suite_score": 0.70, "eval_mlm_loss": 5.0},
                                           champion_metrics={"suite_score": 0.76}, champion_version="1",
                                           gate_evidence={"suite_paired_p_value": 0.04}, **base))
    assert not weaker["promoted"] and "suite_score 0.7000 does not beat champion v1 (0.7600" in weaker["reason"]
    assert "suite_paired_p_value 0.04" in weaker["reason"]
    tags = MlflowClient().get_model_version("gate-test", weaker["version"]).tags
    assert tags["bertflow.gate.suite_paired_p_value"] == "0.04"


def test_the_mlm_loss_gate_compares_only_encoders_of_one_tokenizer(pretrained, tmp_path):
    import json
    import shutil

    from bert_core.registry.registration import RegisterConfig, register_model

    base = dict(registered_model_name="mlm-gate", home=str(tmp_path / "home"), primary_metric="eval_mlm_loss",
                greater_is_better=False, comparable_on=("bertflow.tokenizer_sha256",))
    register_model(RegisterConfig(model_dir=pretrained["final_dir"], metrics={"eval_mlm_loss": 6.0}, **base))
    other = tmp_path / "other"
    shutil.copytree(pretrained["final_dir"], other)
    description = json.loads((other / "bertflow_model.json").read_text())
    (other / "bertflow_model.json").write_text(json.dumps({**description, "tokenizer_sha256": "another"}))
    better_loss = register_model(RegisterConfig(model_dir=str(other), metrics={"eval_mlm_loss": 3.0}, **base))
    assert not better_loss["promoted"] and "not comparable" in better_loss["reason"]
