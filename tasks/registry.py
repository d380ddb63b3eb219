"""Prefect tasks for MLflow: the pipeline's parent run and its nested stage runs, registration behind the gate."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from bert_core import stage, tracking
from bert_core.registry import registration
from bert_core.registry.summary import models_table, render_summary
from bert_core.tracking import manifest_metrics
from bert_core.training.model import pretrained_model_name as model_name_of
from tasks import REGISTRY_LIMIT


def _registry_slot():
    """The `bertflow-registry` global concurrency slot against a Prefect server (where several workers share one
    MLflow server); with the temporary local server of a plain run there is none to take, and the library's file
    lock serialises registrations on this machine."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return contextlib.nullcontext()
    return concurrency(REGISTRY_LIMIT, occupy=1, strict=False)


@task(name="register_model", cache_policy=NO_CACHE)
def register_model(config: registration.RegisterConfig) -> dict:
    with _registry_slot():
        info = registration.register_model(config)
    get_run_logger().info("%s v%s aliases %s: %s", info["name"], info["version"], info["aliases"], info["reason"])
    return info


@task(name="start_run", cache_policy=NO_CACHE)
def start_run(run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
    """The pipeline's parent MLflow run; stage runs nest under it."""
    run_id = tracking.start_run("bertflow", run_name, params, tags=tags)
    get_run_logger().info("MLflow run %s: %s", run_id, tracking.ui_links(run_id)["run"])
    return run_id


@task(name="log_stage_run", cache_policy=NO_CACHE)
def log_stage_run(parent_run_id: str, stage_name: str, stage_dir: str | None = None,
                  metrics: dict[str, float] | None = None, artifacts: list[str] | None = None,
                  tags: dict[str, str] | None = None) -> str:
    """A nested run for one stage: the config its stage record holds as params, `metrics`, `artifacts`, and the
    precision a training stage ran in (`mixed_precision="auto"` resolves per machine) as a tag."""
    record = Path(stage_dir) / stage.STAGE_RECORD if stage_dir else None
    content = stage.read_json(record) if record and record.is_file() else {}
    params = content.get("config")
    ran_in = (content.get("outputs") or {}).get("mixed_precision")
    tags = {**({tracking.PRECISION_TAG: ran_in} if ran_in else {}), **(tags or {})}
    return tracking.log_stage_run(parent_run_id, stage_name, params=params, metrics=metrics,
                                  artifacts=artifacts or (), tags=tags)


@task(name="finish_run", cache_policy=NO_CACHE)
def finish_run(run_id: str, status: str = "FINISHED", metrics: dict[str, float] | None = None,
               tags: dict[str, str] | None = None) -> None:
    if tags:
        tracking.tag_run(run_id, tags)
    if metrics:
        tracking.log_metrics(run_id, metrics)
    tracking.finish_run(run_id, status)


@contextlib.contextmanager
def parent_run(run_name: str, stage_tag: str, tags: dict[str, str] | None = None) -> Iterator[str]:
    """The calling flow run's parent MLflow run (its parameters as params, tagged with the Prefect flow-run id);
    stage runs nest under the id it yields. Marked FAILED if the block raises; on success the flow finishes it
    with `finish_run` and its final metrics."""
    from prefect.runtime import flow_run

    # A stage object (a pydantic model of a config) as the fields the run gave it.
    params = {name: value.model_dump(mode="json", exclude_unset=True) if hasattr(value, "model_dump") else value
              for name, value in flow_run.get_parameters().items()}
    run_id = start_run(f"{run_name} {flow_run.get_name() or ''}".strip(), params=params,
                       tags={"prefect.flow_run_id": str(flow_run.get_id()), "bertflow.stage": stage_tag,
                             **(tags or {})})
    try:
        yield run_id
    except BaseException:
        finish_run(run_id, "FAILED")
        raise


def log_manifests(run_id: str, stage_name: str, output_dir: str) -> dict:
    """One nested MLflow run for a data stage (ingest, or examples per split): its manifest counts as metrics, the
    manifests as artifacts. Returns the manifest (examples: one per split)."""
    out = Path(output_dir)
    splits = ("",) if stage_name == "ingest" else ("train", "validation")
    manifests = {split: stage.read_json(out / split / "manifest.json") for split in splits}
    metrics = {f"{split}_{k}" if split else k: v for split, m in manifests.items() for k, v in manifest_metrics(m).items()}
    log_stage_run(run_id, stage_name, output_dir, metrics=metrics,
                  artifacts=[str(out / split / "manifest.json") for split in splits])
    return manifests[""] if stage_name == "ingest" else manifests


def log_stages(run_id: str, documents_dir: str, examples_dir: str, pretrained: dict) -> dict:
    """The pipeline's nested runs of its data stages (their manifests) and, for an encoder up to date from an
    earlier run, one that points at the run that trained it. Returns the corpus and example manifests."""
    logged = {"corpus": log_manifests(run_id, "ingest", documents_dir),
              "examples": log_manifests(run_id, "examples", examples_dir)}
    if pretrained.get("reused"):
        run_dir = Path(pretrained["final_dir"]).parent
        log_stage_run(run_id, f"pretrain-{model_name_of(pretrained['final_dir'])}", str(run_dir),
                      metrics=manifest_metrics(pretrained),
                      tags={"bertflow.reused_run_id": pretrained.get("mlflow_run_id") or ""})
    return logged


def finish_pipeline(summary: dict) -> None:
    """End the pipeline's MLflow run with the final figures and the registered versions; its Prefect artifacts."""
    registered = [info for info in summary["registered"].values() if info]
    finish_run(summary["mlflow_run_id"], metrics={**summary["classifier"], **summary["pretrained"]},
               tags={f"bertflow.registered.{info['name']}": info["version"] for info in registered})
    summary["mlflow_links"] = {"pipeline_run": tracking.ui_links(summary["mlflow_run_id"])["run"],
                               **{info["name"]: tracking.ui_links(model=(info["name"], info["version"]))["model_version"]
                                  for info in registered}}
    create_markdown_artifact(key="pipeline-summary", markdown=render_summary(summary, markdown=True),
                             description="bert-pipeline summary")
    create_table_artifact(key="pipeline-models", table=models_table(summary),
                          description="Models this run registered, their aliases and the promotion decision")

