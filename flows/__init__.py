"""Thin Prefect flows: the order of the stages and nothing else. One flow per stage, plus `pipeline.bert_pipeline`."""

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

# Let bert_core's own log lines reach the Prefect run logs (and the UI), not only the console.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bert_core")
# The temporary server a local run starts would try to send usage telemetry and log an ERROR on machines without
# internet access; opt out unless the user set it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


# Parameter types shared by the flows: Prefect validates runs against them and renders them as UI form fields
# (choices as drop-downs, bounds checked before a run starts); each flow's docstring `Args:` gives the descriptions.
Preset = Literal["bert-tiny", "bert-mini", "bert-small", "bert-medium", "bert-base", "bert-large"]
MixedPrecision = Literal["no", "bf16", "fp16"]
PairObjective = Literal["nsp", "sop", "none"]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
SeqLength = Annotated[int, Field(ge=16, le=512)]


def manifest_metrics(record: dict) -> dict[str, float]:
    """The numeric top-level fields of a stage manifest or summary, and its per-reason rejection counts, as
    MLflow metrics of the stage's run."""
    out = {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for reason, count in (record.get("documents_rejected") or {}).items():
        out[f"documents_rejected_{reason}"] = float(count)
    return out


def default_work_dir(work_dir: str | None) -> Path:
    """Stage outputs live under the project data directory unless a work_dir is given."""
    from bert_core.registry import bertflow_home

    return Path(work_dir) if work_dir else bertflow_home() / "work"


def dask_task_runner(n_workers: int, dask_address: str | None):
    """A DaskTaskRunner on an existing scheduler, or on a local cluster of `n_workers` single-threaded processes."""
    from prefect.client.orchestration import get_client
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    # Workers must report to this run's Prefect API; without it each would start a temporary server of its own.
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url).rstrip("/")
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "env": {"PREFECT_API_URL": api_url}})


def balanced_batches(items: list, sizes: list[float], num_batches: int) -> list[list]:
    """Split items into about `num_batches` batches of similar total size, keeping their order inside each.

    One Prefect task per batch instead of per item keeps the orchestration overhead (API calls, state changes)
    small next to the work when there are thousands of small items.
    """
    loads = [0.0] * max(1, min(num_batches, len(items)))
    batches: list[list[int]] = [[] for _ in loads]
    for index in sorted(range(len(items)), key=lambda i: -sizes[i]):
        target = loads.index(min(loads))
        batches[target].append(index)
        loads[target] += sizes[index]
    return [[items[i] for i in sorted(batch)] for batch in batches if batch]
