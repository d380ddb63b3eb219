"""Flow: evaluate a pretrained model on its held-out shards and a fine-tuned task model on its dev file, compare the
task model with the registered champion on the same file, and write reports and plots; returns each model's `Gate`
(what its promotion gate compares) with the figures."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from bert_core import stage
from bert_core.metrics import eval_metrics
from bert_core.registry.records import Gate, encoder_gate
from bert_core.training.model import model_description
from tasks.evaluate import evaluate_pretrained, evaluate_task_model, write_pretraining_report
from tasks.registry import log_stage_run


@flow(name="evaluate")
def evaluate_flow(
    pretrained_dir: str,
    classifier_dir: str | None = None,
    report_dir: str | None = None,
    champion_model_uri: str | None = None,
    suite: dict | None = None,
    mlflow_parent_run_id: str | None = None,
) -> dict:
    """The figures and gates of an encoder and of a task model fine-tuned from it.

    Args:
        pretrained_dir: A pretraining run's `final/`: scored on the validation split of the shards it was trained on
            (its run's stage record names them), its training curves plotted from the run's metrics.jsonl.
        classifier_dir: A fine-tuning run's `final/` (classifier, token classifier, question answering): scored on
            the dev file its description names, the way its description says it reads it.
        report_dir: Where reports and plots go; empty: `<pretrained run>/reports`.
        champion_model_uri: The task's champion (models:/bertflow-sst2@champion), scored on the same file when set.
        suite: The encoder's suite gate (`flows.suite.encoder_gate`): its figures join the encoder's, and decide.
        mlflow_parent_run_id: Log the figures as an `evaluate` stage run nested under this one.
    """
    run_dir = Path(pretrained_dir).parent
    report_dir = Path(report_dir) if report_dir else run_dir / "reports"
    shards = Path(stage.read_json(run_dir / stage.STAGE_RECORD)["config"]["shards_dir"])
    initial = stage.read_json(run_dir / "summary.json")["initial_eval_mlm_loss"]
    held_out = {**evaluate_pretrained(pretrained_dir, str(shards / "validation")), "initial_eval_mlm_loss": initial}
    curves = write_pretraining_report(str(run_dir / "metrics.jsonl"), str(report_dir))
    suite = suite or {}
    pretrained = encoder_gate({**eval_metrics(held_out), **suite.get("metrics", {})}, suite.get("champion_metrics"),
                              suite.get("champion_version"), suite.get("evidence"), (*curves, *suite.get("files", ())))
    result = {"pretrained": pretrained, "classifier": None, "comparison": None, "champion_version": None}
    if classifier_dir:
        task = evaluate_task_model(classifier_dir, model_description(classifier_dir)["validation_file"],
                                   str(report_dir / "classifier"), champion_model_uri=champion_model_uri)
        champion = eval_metrics(task["champion_metrics"]) if task["champion_metrics"] else None
        result.update(comparison=task["comparison"], champion_version=task["champion_version"],
                      classifier=Gate(metrics=eval_metrics(task["metrics"]), primary_metric=f"eval_{task['primary_metric']}",
                                      champion_metrics=champion, champion_version=task["champion_version"],
                                      artifacts=tuple(task["reports"])))
    if mlflow_parent_run_id:
        classifier = result["classifier"]
        log_stage_run(mlflow_parent_run_id, "evaluate", artifacts=[*curves, *(classifier.artifacts if classifier else ())],
                      metrics={**pretrained.metrics, **(classifier.metrics if classifier else {}),
                               **{f"champion_{k}": v for k, v in ((classifier and classifier.champion_metrics) or {}).items()}},
                      tags={"bertflow.champion_version": result["champion_version"] or "none"})
    return result
