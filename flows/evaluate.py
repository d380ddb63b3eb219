"""Flow: evaluate a pretrained model on held-out shards and a classifier on its dev file; write reports and plots."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from bert_core.finetune import FinetuneConfig
from tasks.evaluate import evaluate_classifier, evaluate_pretrained, write_pretraining_report


@flow(name="evaluate")
def evaluate_flow(
    pretrained_dir: str,
    validation_shards_dir: str,
    report_dir: str,
    pretrain_metrics_file: str | None = None,
    classifier_dir: str | None = None,
    classifier_data_file: str | None = None,
    text_column: str = FinetuneConfig.text_column,
    label_column: str = FinetuneConfig.label_column,
) -> dict:
    """Held-out MLM/NSP metrics, classifier dev metrics (or None) and the report files written for each."""
    pretrained = evaluate_pretrained(pretrained_dir, validation_shards_dir)
    pretrained_reports = write_pretraining_report(pretrain_metrics_file, report_dir) if pretrain_metrics_file else []
    classifier, classifier_reports = None, []
    if classifier_dir and classifier_data_file:
        classifier_report = str(Path(report_dir) / "classifier")
        classifier = evaluate_classifier(classifier_dir, classifier_data_file, classifier_report, text_column,
                                         label_column)
        classifier_reports = [str(Path(classifier_report) / name) for name in
                              ("classifier_metrics.json", "predictions.jsonl", "confusion_matrix.png")]
    return {"pretrained": pretrained, "classifier": classifier, "pretrained_reports": pretrained_reports,
            "classifier_reports": classifier_reports}
