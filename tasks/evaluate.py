"""Prefect tasks for evaluation: held-out MLM/NSP metrics, classifier dev metrics, reports and plots."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bert_core import evaluate


@task(name="evaluate_pretrained", cache_policy=NO_CACHE)
def evaluate_pretrained(model_dir: str, shards_dir: str) -> dict:
    metrics = evaluate.evaluate_pretrained(model_dir, shards_dir)
    get_run_logger().info("held-out: %s", metrics)
    return metrics


@task(name="write_pretraining_report", cache_policy=NO_CACHE)
def write_pretraining_report(metrics_jsonl: str, output_dir: str) -> list[str]:
    paths = evaluate.write_pretraining_report(metrics_jsonl, output_dir)
    return [str(paths.json), *map(str, paths.plots)]


@task(name="evaluate_classifier", cache_policy=NO_CACHE)
def evaluate_classifier(model_dir: str, data_file: str, output_dir: str, text_column: str, label_column: str) -> dict:
    metrics = evaluate.evaluate_classifier(model_dir, data_file, output_dir, text_column=text_column,
                                           label_column=label_column)
    matrix = metrics["confusion_matrix"]
    create_markdown_artifact(
        key="classifier-evaluation",
        markdown=(f"## Classifier on `{data_file}`\n\n| metric | value |\n|---|---|\n"
                  + "".join(f"| {k} | {metrics[k]:.4f} |\n" for k in ("accuracy", "f1", "macro_f1", "matthews_correlation"))
                  + f"\nConfusion matrix (rows true, columns predicted): `{matrix}`\n"),
        description="Dev-set metrics of the fine-tuned classifier",
    )
    get_run_logger().info("classifier: accuracy %.4f, F1 %.4f", metrics["accuracy"], metrics["f1"])
    return metrics
