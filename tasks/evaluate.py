"""Prefect tasks for evaluation: held-out MLM/NSP metrics, task-model dev metrics with the champion comparison,
reports, plots and their Prefect artifacts."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bert_core.downstream import evaluation, reports
from bert_core.metrics import scalar_metrics


@task(name="evaluate_pretrained", cache_policy=NO_CACHE)
def evaluate_pretrained(model_dir: str, shards_dir: str) -> dict:
    metrics = evaluation.evaluate_pretrained(model_dir, shards_dir)
    get_run_logger().info("held-out: %s", metrics)
    return metrics


@task(name="write_pretraining_report", cache_policy=NO_CACHE)
def write_pretraining_report(metrics_jsonl: str, output_dir: str) -> list[str]:
    paths = reports.write_pretraining_report(metrics_jsonl, output_dir)
    return [str(paths.json), *map(str, paths.plots)]


def _champion(model_uri: str | None) -> tuple[str | None, str | None]:
    """(local directory, version) of the registered champion, or (None, None) when there is none yet.

    The alias is read once and the version is downloaded by number, so the figures belong to a known version even
    if another run moves the alias meanwhile (the promotion gate checks that version against the current one).
    """
    if not model_uri:
        return None, None
    from mlflow.exceptions import MlflowException

    from bert_core.registry.registration import registered_version
    from bert_core.training.model import resolve_model

    try:
        name, version = registered_version(model_uri)
        if version is None:
            get_run_logger().info("no champion to compare with: %s is not set", model_uri)
            return None, None
        return resolve_model(f"models:/{name}/{version}"), version
    except (MlflowException, OSError) as error:
        get_run_logger().info("no champion to compare with (%s): %s", model_uri, str(error).splitlines()[0][:200])
        return None, None


@task(name="evaluate_task_model", cache_policy=NO_CACHE)
def evaluate_task_model(model_dir: str, data_file: str, output_dir: str, *, champion_model_uri: str | None = None,
                        **reading) -> dict:
    """The task model (its kind and how it reads `data_file` from its directory; `reading` overrides) and the
    champion, scored the same way on the same file."""
    champion_dir, champion_version = _champion(champion_model_uri)
    result = evaluation.evaluate_task(None, model_dir, data_file, output_dir, champion_dir=champion_dir, **reading)
    result["champion_version"] = champion_version if result["champion_metrics"] else None
    create_markdown_artifact(key="task-evaluation", markdown=result.pop("report_markdown"),
                             description=f"Dev-set evaluation of the fine-tuned {result['kind']} model")
    metrics = scalar_metrics(result["metrics"])
    champion = scalar_metrics(result["champion_metrics"] or {})
    create_table_artifact(key="task-metrics", description="Candidate vs champion on the same dev set",
                          table=[{"metric": k, "candidate": round(v, 6),
                                  "champion": round(champion[k], 6) if k in champion else None}
                                 for k, v in metrics.items()])
    primary = result["primary_metric"]
    get_run_logger().info("%s on %s: %s %.4f%s", result["kind"], data_file, primary, metrics[primary],
                          f" (champion {champion[primary]:.4f})" if primary in champion else "")
    return result
