"""MLflow tracking: where runs go, and the runs of a pipeline (one parent, a nested run per stage).

By default tracking is embedded: a SQLite store and an artifact root under the project data directory
(`BERTFLOW_HOME`, default `~/.bertflow`), never wherever the current directory happens to be;
`MLFLOW_TRACKING_URI` points it at a server instead. Params, tags and links never carry credentials (`redact`).
Lineage tags tie a model version to the corpus, shards, config and code that produced it. The model registry and
its promotion gate are `bert_core.registry.registration`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bert_core import stage
from bert_core.metrics import scalar_metrics
from bert_core.stage import bertflow_home

logger = logging.getLogger(__name__)


# mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI; remember what we set so that a user's own value
# can be told apart from ours.
_own_tracking_uri: str | None = None


def configure_tracking(home: str | Path | None = None) -> str:
    """Point MLflow at the user's `MLFLOW_TRACKING_URI`, else at `<home>/mlflow.db`; return the tracking URI.

    An explicit `home` always wins (tests and embedded runs); with none, `BERTFLOW_HOME` decides.
    """
    global _own_tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    users = env if env and env != _own_tracking_uri else None
    if users and home is None:
        uri = users
    else:
        root = Path(home) if home else bertflow_home()
        root.mkdir(parents=True, exist_ok=True)
        uri = _own_tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def artifact_root(home: str | Path | None = None) -> Path:
    return (Path(home) if home else bertflow_home()) / "mlartifacts"


def ensure_experiment(name: str, home: str | Path | None = None) -> str:
    """The experiment's id, creating it if needed.

    With a local store the artifact root goes under the data directory (MLflow's default is ./mlruns relative to
    whatever the current directory is); a tracking server keeps its own artifact settings.
    """
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = mlflow.get_tracking_uri().startswith(("sqlite:", "file:", "/"))
    return mlflow.create_experiment(name, artifact_location=artifact_root(home).as_uri() if local else None)


def start_run(experiment_name: str, run_name: str, params: Any = None, home: str | Path | None = None, *,
              parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create a run (not made active) with the flattened `params`; return its id, for a process to log into.

    With `parent_run_id` the run is nested under that run (MLflow's `mlflow.parentRunId` tag), as the UI shows it.
    """
    configure_tracking(home)
    client = MlflowClient()
    all_tags = {**(tags or {}), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    run = client.create_run(ensure_experiment(experiment_name, home), run_name=run_name, tags=all_tags)
    flat: dict[str, str] = {}
    flatten_params("", stage.to_jsonable(params) if params is not None else {}, flat)
    items = [(k, redact(v)) for k, v in flat.items()]
    for chunk in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in items[chunk : chunk + 100]])
    return run.info.run_id


def finish_run(run_id: str, status: str = "FINISHED", home: str | Path | None = None) -> None:
    """Mark a run created by `start_run` as ended (FINISHED, FAILED or KILLED)."""
    configure_tracking(home)
    MlflowClient().set_terminated(run_id, status=status)


def log_stage_run(parent_run_id: str, stage_name: str, *, experiment_name: str = "bertflow", params: Any = None,
                  metrics: dict[str, float] | None = None, artifacts: tuple[str, ...] | list[str] = (),
                  tags: dict[str, str] | None = None, home: str | Path | None = None) -> str:
    """One finished nested run for a pipeline stage: its config as params, its counts as metrics, its manifests and
    reports as artifacts. Returns the run id."""
    run_id = start_run(experiment_name, stage_name, params, home, parent_run_id=parent_run_id,
                       tags={"bertflow.stage": stage_name, **(tags or {})})
    client = MlflowClient()
    log_metrics(run_id, metrics or {}, home)
    for path in artifacts:
        if Path(path).is_dir():
            client.log_artifacts(run_id, str(path))
        elif Path(path).is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def tag_run(run_id: str, tags: dict[str, str], home: str | Path | None = None) -> None:
    configure_tracking(home)
    MlflowClient().log_batch(run_id, tags=[RunTag(k, redact(str(v))[:5000]) for k, v in tags.items()])


def log_metrics(run_id: str, metrics: dict[str, float], home: str | Path | None = None) -> None:
    configure_tracking(home)
    now = int(time.time() * 1000)
    values = [Metric(k, v, now, 0) for k, v in scalar_metrics(metrics).items()]
    for chunk in range(0, len(values), 500):
        MlflowClient().log_batch(run_id, metrics=values[chunk : chunk + 500])


# The precision a training run ran in ("auto" resolves per machine): a tag of its MLflow run and registered version.
PRECISION_TAG = "bertflow.mixed_precision"

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s:]+(?::[^/@\s]*)?)@")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:token|access_token|api_key|apikey|key|password|secret|sig|signature)=)[^&\s]+")


def redact(text: str) -> str:
    """`text` with credentials removed from any URI in it (user:password@, ?token=...), for params, tags and logs."""
    text = _CREDENTIALS.sub(lambda m: f"{m['scheme']}***@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m[1]}***", text)


def run_exists(run_id: str, home: str | Path | None = None) -> bool:
    configure_tracking(home)
    try:
        MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


def flatten_params(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            flatten_params(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def ui_links(run_id: str | None = None, model: tuple[str, str] | None = None) -> dict[str, str]:
    """Links into the MLflow UI: the tracking server's own when MLFLOW_TRACKING_URI is http(s), else where
    `mlflow ui` serves by default (127.0.0.1:5000). Credentials in the URI are never included."""
    uri = mlflow.get_tracking_uri()
    # A browser link: the server's address without any credentials (user:password@) or query in the URI.
    base = (_CREDENTIALS.sub(lambda m: m["scheme"], uri.split("?")[0]).rstrip("/")
            if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000")
    links: dict[str, str] = {}
    if run_id:
        run = MlflowClient().get_run(run_id)
        links["run"] = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    if model:
        links["model_version"] = f"{base}/#/models/{model[0]}/versions/{model[1]}"
    return links


def source_commit() -> str:
    """The git commit of the bertflow checkout in use, or "unknown" for an installed copy."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def lineage_tags(*, documents_dir: str | Path | None, examples_dir: str | Path,
                 pretrain_dir: str | Path) -> dict[str, str]:
    """Tags that tie a model version to the exact corpus, tokenizer, shards, config and code that produced it
    (`documents_dir` None: shards written before their record named their corpus; no corpus tags)."""
    examples_dir, pretrain_dir = Path(examples_dir), Path(pretrain_dir)
    train_manifest = stage.read_json(examples_dir / "train" / "manifest.json")
    corpus = {}
    if documents_dir is not None:
        ingest_manifest = stage.read_json(Path(documents_dir) / "manifest.json")
        corpus = {"bertflow.corpus_sources": json.dumps(ingest_manifest["config"]["sources"])[:5000],
                  "bertflow.ingest_manifest_sha256": stage.hash_file(Path(documents_dir) / "manifest.json")}
    return {
        **corpus,
        "bertflow.train_shards_manifest_sha256": stage.hash_file(examples_dir / "train" / "manifest.json"),
        "bertflow.validation_shards_manifest_sha256": stage.hash_file(examples_dir / "validation" / "manifest.json"),
        "bertflow.tokenizer_sha256": train_manifest["tokenizer_hash"],
        "bertflow.pretrain_stage_key": stage.read_json(pretrain_dir / stage.STAGE_RECORD)["key"],
        "bertflow.git_commit": source_commit(),
    }


class RunMetrics:
    """Logs metric records to an existing MLflow run as training goes (main process only)."""

    def __init__(self, run_id: str):
        self.client, self.run_id = MlflowClient(), run_id

    def log(self, record: dict[str, Any]) -> None:
        step, now = int(record["step"]), int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as error:  # noqa: BLE001 - tracking trouble must not stop a training run
            logger.warning("could not log metrics to MLflow run %s: %s", self.run_id, error)


def manifest_metrics(record: dict) -> dict[str, float]:
    """The numeric top-level fields of a stage manifest or summary, and its per-reason rejection counts, as
    MLflow metrics of the stage's run."""
    out = scalar_metrics(record)
    for reason, count in (record.get("documents_rejected") or {}).items():
        out[f"documents_rejected_{reason}"] = float(count)
    return out
