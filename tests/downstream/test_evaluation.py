import json
from pathlib import Path

import numpy as np
import pytest

from bert_core.downstream.evaluation import evaluate_pretrained
from bert_core.downstream.reports import write_pretraining_report
from bert_core.metrics import classification_metrics


def test_classification_metrics_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    preds = np.array([1, 1, 0, 0, 0, 1, 0, 1])
    m = classification_metrics(labels, preds, 2)
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75)
    assert m["matthews_correlation"] == pytest.approx(0.5)


def test_constant_prediction_has_zero_mcc():
    m = classification_metrics(np.array([0, 1, 1, 0]), np.array([1, 1, 1, 1]), 2)
    assert m["matthews_correlation"] == 0.0 and m["accuracy"] == 0.5


def test_evaluate_pretrained_matches_the_training_run(pretrained, examples_dir):
    metrics = evaluate_pretrained(pretrained["final_dir"], examples_dir / "validation")
    assert metrics["mlm_loss"] == pytest.approx(pretrained["eval_mlm_loss"], rel=1e-4)
    assert metrics["nsp_accuracy"] == pytest.approx(pretrained["eval_nsp_accuracy"])


def test_pretraining_report_plots(pretrained, tmp_path):
    paths = write_pretraining_report(Path(pretrained["final_dir"]).parent / "metrics.jsonl", tmp_path)
    png = paths.plots[0].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    report = json.loads(paths.json.read_text())
    assert report["held_out"][0]["step"] == 0 and report["held_out"][-1]["step"] == 30


def test_evaluate_cli(pretrained, examples_dir, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    (tmp_path / "c.json").write_text(json.dumps({"model_dir": pretrained["final_dir"],
                                                 "shards_dir": str(examples_dir / "validation")}))
    out = subprocess.run([sys.executable, "-m", "bert_core", "evaluate", "--config", str(tmp_path / "c.json")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["pretrained"]["mlm_loss"] == pytest.approx(pretrained["eval_mlm_loss"], rel=1e-4)


def test_evaluate_config_must_name_something():
    from bert_core.downstream.evaluation import EvaluateConfig, evaluate_models

    with pytest.raises(ValueError, match="name a pretrained model"):
        evaluate_models(EvaluateConfig())
