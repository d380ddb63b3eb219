"""Thin Prefect flows: the order of the stages and nothing else. One flow per stage, plus `pipeline.bert_pipeline`."""

import contextlib
import inspect
import os
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

# Set before prefect is imported (tasks.registry, below, imports it). Let bert_core's own log lines reach the Prefect run logs (and the UI), not only the console.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bert_core")
# The temporary server a local run starts would try to send usage telemetry and log an ERROR on machines without
# internet access; opt out unless the user set it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A local run without PREFECT_API_URL starts that temporary server, which creates and migrates a new database on a
# fresh machine first: 24 s on a 2-core AMD EPYC (AVX2), where Prefect's default wait of 20 s made the README's first
# command fail ("Timed out while attempting to connect to ephemeral Prefect API server"); 11 s on the second start.
EPHEMERAL_SERVER_STARTUP_SECONDS = 120
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_SERVER_STARTUP_SECONDS))

from pydantic import ConfigDict, Field
from typing_extensions import TypedDict  # pydantic needs this one, not typing's, before Python 3.12

from bert_core import stage
from bert_core.config import MIXED_PRECISION
from bert_core.examples.generation import PAIR_OBJECTIVES
from bert_core.metrics import scalar_metrics
from bert_core.training.model import ARCHITECTURES, PRESETS
from tasks.registry import log_stage_run

# Parameter types shared by the flows: Prefect validates runs against them and renders them as UI form fields
# (choices as drop-downs, bounds checked before a run starts); each flow's docstring `Args:` gives the descriptions.
# The choices are the library's own lists; the stage configs check every value again (bert_core.config).
Preset = Literal[tuple(PRESETS)]
Architecture = Literal[ARCHITECTURES]
MixedPrecision = Literal[MIXED_PRECISION]
PairObjective = Literal[PAIR_OBJECTIVES]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
SeqLength = Annotated[int, Field(ge=8, le=512)]  # ExamplesConfig's bounds; 512: BERT's position embeddings

# The bundled sample's run, a few minutes on 2 CPU cores: per stage flow, the only parameter defaults of the user
# flows that differ from the stage configs' own (tests/test_defaults.py holds every flow to that). The stage configs'
# defaults are sized for a real corpus.
SAMPLE_PROFILE: dict[str, dict[str, object]] = {
    "examples": {"vocab_size": 8192},
    "pretrain": {"learning_rate": 1e-3, "num_warmup_steps": 50, "max_train_steps": 500, "eval_steps": 100,
                 "checkpointing_steps": 100},
    "finetune": {"learning_rate": 5e-4},  # a bert-tiny fine-tunes best far above BERT-base's 5e-5
}


def stage_parameters(stage_flow, name: str, *, inputs: tuple[str, ...]):
    """A TypedDict of a stage flow's parameters but its `inputs` (what the pipeline wires): the type of the pipeline
    parameter that overrides them, so Prefect checks a run's overrides (names and values) before it starts and the
    run form shows them. The stage flow's signature stays their one home."""
    hints = typing.get_type_hints(stage_flow.fn, include_extras=True)
    fields = {p: hints[p] for p in inspect.signature(stage_flow.fn).parameters if p not in inputs}
    parameters = TypedDict(name, fields, total=False)
    parameters.__pydantic_config__ = ConfigDict(extra="forbid")
    return parameters


def stage_overrides(stage_name: str, given: dict | None) -> dict:
    """A pipeline's parameters for one stage flow: the sample profile's, then the run's own."""
    return {**SAMPLE_PROFILE.get(stage_name, {}), **(given or {})}


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


def manifest_metrics(record: dict) -> dict[str, float]:
    """The numeric top-level fields of a stage manifest or summary, and its per-reason rejection counts, as
    MLflow metrics of the stage's run."""
    out = scalar_metrics(record)
    for reason, count in (record.get("documents_rejected") or {}).items():
        out[f"documents_rejected_{reason}"] = float(count)
    return out


def default_work_dir(work_dir: str | None) -> Path:
    """Stage outputs live under the project data directory unless a work_dir is given."""
    return Path(work_dir) if work_dir else stage.bertflow_home() / "work"


def _prefect_api_url() -> str:
    """This run's Prefect API (a temporary server's when none is configured): the one its Dask workers report to."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def _report_to(api_url: str) -> None:
    """Run on every worker of a cluster started elsewhere: its Prefect tasks report to this run's API. Without it a
    worker started with no PREFECT_API_URL starts a temporary server of its own, and the run never sees its tasks."""
    os.environ["PREFECT_API_URL"] = api_url


@contextlib.contextmanager
def data_cluster(n_workers: int, dask_address: str | None) -> Iterator[tuple[str | None, int]]:
    """(scheduler address, worker threads) that a data stage's units run on, for the length of the block.

    `dask_address`: a cluster started elsewhere (`dask scheduler` + `dask worker --nthreads 1 ...`), whose workers
    are pointed at this run's Prefect API. Else, for `n_workers > 1`, one `stage.local_data_cluster` of that many
    single-threaded processes, shared by every stage inside the block (the pipeline's ingest and examples start it
    once). Else (None, 1): the flow's own thread runner. A stage cuts its units into about four batches per worker
    thread.
    """
    if dask_address:
        from distributed import Client

        with Client(dask_address, timeout=30) as client:
            client.run(_report_to, _prefect_api_url())
            threads = sum(client.nthreads().values())
        yield dask_address, max(1, threads)
    elif n_workers > 1:
        with stage.local_data_cluster(n_workers, env={"PREFECT_API_URL": _prefect_api_url()}) as cluster:
            yield cluster.scheduler_address, n_workers
    else:
        yield None, 1


def dask_task_runner(address: str):
    """A DaskTaskRunner on the scheduler at `address` (see `data_cluster`)."""
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)


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
