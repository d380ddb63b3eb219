"""The downstream suite: both arms fine-tuned under one protocol, a real random-init twin, its runs cached."""

import json
import math
from pathlib import Path
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bert_core import stage
from bert_core.suite import SuiteConfig, paired_p_value, run_suite, summary_line
from tests.conftest import REPO


@pytest.fixture(scope="module")
def reports(pretrained, tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    config = SuiteConfig(encoder=pretrained["final_dir"], output_dir=str(root / "a"), size="tiny", max_seq_length=64,
                         max_train_steps=10, twin_dir=str(root / "twins"))
    first = run_suite(config)
    # Another run on the same architecture and tokenizer: the twin's runs are all reused.
    second = run_suite(SuiteConfig(**{**config.__dict__, "output_dir": str(root / "b")}))
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
    from bert_core.catalogue import get_task
    from bert_core.suite import suite_metric

    assert suite_metric(get_task("sst2")) == "eval_accuracy" and suite_metric(get_task("mrpc")) == "eval_f1"
