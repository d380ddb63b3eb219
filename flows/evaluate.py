"""Flow: evaluate a pretrained model on held-out shards and a fine-tuned task model on its dev file, compare the
task model with the registered champion on the same file, and write reports and plots."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.evaluate import evaluate_pretrained, evaluate_task_model, write_pretraining_report


@flow(name="evaluate")
def evaluate_flow(
    pretrained_dir: str,
    validation_shards_dir: str,
    report_dir: str,
    pretrain_metrics_file: str | None = None,
    classifier_dir: str | None = None,
    classifier_data_file: str | None = None,
    champion_model_uri: str | None = None,
) -> dict:
    """Held-out MLM/NSP metrics, the task model's dev metrics (or None) and the report files of each.

    `classifier_dir` is any fine-tuned task model (classifier, token classifier, question answering): its directory
    says how it reads the dev file; `champion_model_uri` (e.g. models:/bertflow-sst2@champion) is scored on the
    same file, the same way, when it exists.
    """
    pretrained = evaluate_pretrained(pretrained_dir, validation_shards_dir)
    pretrained_reports = write_pretraining_report(pretrain_metrics_file, report_dir) if pretrain_metrics_file else []
    task = None
    if classifier_dir and classifier_data_file:
        task = evaluate_task_model(classifier_dir, classifier_data_file, str(Path(report_dir) / "classifier"),
                                   champion_model_uri=champion_model_uri)
    return {"pretrained": pretrained, "classifier": task["metrics"] if task else None,
            "champion": task["champion_metrics"] if task else None,
            "champion_version": task["champion_version"] if task else None,
            "comparison": task["comparison"] if task else None,
            "pretrained_reports": pretrained_reports, "classifier_reports": task["reports"] if task else []}
