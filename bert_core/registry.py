"""MLflow tracking and registry: log a stage's run, register its model, and move aliases behind a promotion gate.

By default tracking is embedded: a SQLite store and an artifact root under the project data directory
(`BERTFLOW_HOME`, default `~/.bertflow`), never wherever the current directory happens to be;
`MLFLOW_TRACKING_URI` points it at a server instead. Each registered version carries lineage tags (config hash,
model hash, input manifests) and its evaluation metrics. A new version gets the alias `candidate`; it also becomes
`champion` when there is none yet or when its primary metric beats the champion's by `min_improvement`.
Registering the same model directory twice returns the existing version instead of a duplicate.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from bert_core import stage

logger = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).resolve().parent / "pyfunc_model.py"
KINDS = ("classifier", "token-classifier", "question-answering", "pretrained")  # as in pyfunc_model.KINDS
CHAMPION, CANDIDATE = "champion", "candidate"


def bertflow_home() -> Path:
    return Path(os.environ.get("BERTFLOW_HOME", Path.home() / ".bertflow")).expanduser().resolve()


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


@dataclass(frozen=True, kw_only=True)
class RegisterConfig:
    model_dir: str
    registered_model_name: str
    kind: str = "classifier"  # "classifier", "token-classifier", "question-answering" or "pretrained"
    text_pair: bool = False  # a sentence-pair classifier: its pyfunc takes `text` and `text_pair` columns
    experiment_name: str = "bertflow"
    run_name: str | None = None
    primary_metric: str = "eval_accuracy"
    greater_is_better: bool = True
    min_improvement: float = 0.0
    max_seq_length: int | None = None  # the pyfunc's window (default 128; 384 for question answering)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: tuple[str, ...] = ()
    metrics_history: str | None = None  # a metrics.jsonl whose per-step values are logged with their step
    run_id: str | None = None  # log into this existing run (e.g. the one training logged its metrics to)
    # The current champion's metrics on the same evaluation set as `metrics`, measured now; the gate compares with
    # these instead of the figures the champion was registered with (which may come from another dev set).
    champion_metrics: dict[str, float] | None = None
    home: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; one of {KINDS}")


def start_run(experiment_name: str, run_name: str, params: Any = None, home: str | Path | None = None) -> str:
    """Create a run (not made active) with the flattened `params`; return its id, for a process to log into."""
    configure_tracking(home)
    client = MlflowClient()
    run = client.create_run(ensure_experiment(experiment_name, home), run_name=run_name)
    flat: dict[str, str] = {}
    _flatten("", stage.to_jsonable(params) if params is not None else {}, flat)
    items = list(flat.items())
    for chunk in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in items[chunk : chunk + 100]])
    return run.info.run_id


def run_exists(run_id: str, home: str | Path | None = None) -> bool:
    configure_tracking(home)
    try:
        MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def _signature(kind: str, pairs: bool = False) -> tuple[ModelSignature, Any]:
    """The model signature and input example of a pyfunc model of this kind (see `pyfunc_model`)."""
    import pandas as pd

    if kind == "question-answering":
        inputs = Schema([ColSpec("string", "question"), ColSpec("string", "context")])
        outputs = Schema([ColSpec("string", "answer"), ColSpec("long", "start"), ColSpec("double", "score")])
        example = pd.DataFrame({"question": ["Who wrote the play?"],
                                "context": ["The play was written by Henrik Ibsen in 1879."]})
        return ModelSignature(inputs=inputs, outputs=outputs), example
    if kind == "classifier":
        outputs = Schema([ColSpec("string", "label"), ColSpec("long", "label_id"), ColSpec("double", "score")])
        if pairs:
            inputs = Schema([ColSpec("string", "text"), ColSpec("string", "text_pair")])
            example = pd.DataFrame({"text": ["The company said profits rose."],
                                    "text_pair": ["Profits went up, the company said."]})
            return ModelSignature(inputs=inputs, outputs=outputs), example
        # One unnamed string column: accepts a list of raw strings, one string, or a DataFrame with a text column.
        return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=outputs), ["a gorgeous, witty film"]
    if kind == "token-classifier":
        return ModelSignature(inputs=Schema([ColSpec("string")])), ["Alice Smith flew from Paris to Berlin ."]
    if kind == "pretrained":
        # No input schema: the task param decides the input (texts; `text` + `text_pair` for nsp).
        params = ParamSchema([ParamSpec("task", "string", "fill-mask"), ParamSpec("pooling", "string", "mean")])
        return ModelSignature(params=params), ["the [MASK] of the film"]
    raise ValueError(f"unknown model kind {kind!r}; one of {KINDS}")


def _version_info(client: MlflowClient, name: str, version: str, **extra) -> dict[str, Any]:
    mv = client.get_model_version(name, version)
    return {"name": name, "version": str(mv.version), "aliases": sorted(mv.aliases), "run_id": mv.run_id,
            "model_uri": f"models:/{name}/{mv.version}", **extra}


def _metric_of(client: MlflowClient, name: str, version: str, metric: str) -> float | None:
    value = client.get_model_version(name, version).tags.get(f"bertflow.metric.{metric}")
    return float(value) if value is not None else None


def promote(client: MlflowClient, config: RegisterConfig, version: str) -> tuple[bool, str]:
    """Give `version` the candidate alias; make it champion if it beats the current one. Return (promoted, why)."""
    name = config.registered_model_name
    client.set_registered_model_alias(name, CANDIDATE, version)
    new = config.metrics.get(config.primary_metric)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return True, "no champion yet"
    if str(champion.version) == str(version):
        return True, "already champion"
    old = _metric_of(client, name, champion.version, config.primary_metric)
    same_set = bool(config.champion_metrics) and config.primary_metric in config.champion_metrics
    if same_set:
        old = float(config.champion_metrics[config.primary_metric])
    if new is None:
        return False, f"version {version} has no {config.primary_metric}; champion v{champion.version} stays"
    if old is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return True, f"champion v{champion.version} has no {config.primary_metric}"
    gain = (new - old) if config.greater_is_better else (old - new)
    where = " on the same evaluation set" if same_set else ", as registered"
    if gain > config.min_improvement:
        client.set_registered_model_alias(name, CHAMPION, version)
        return True, f"{config.primary_metric} {new:.4f} beats champion v{champion.version} ({old:.4f}{where})"
    return False, (f"{config.primary_metric} {new:.4f} does not beat champion v{champion.version} ({old:.4f}{where}) "
                   f"by more than {config.min_improvement}")


def register_model(config: RegisterConfig) -> dict[str, Any]:
    """Log a run with params, metrics, artifacts and the pyfunc model; register it; apply the promotion gate."""
    configure_tracking(config.home)
    client = MlflowClient()
    name = config.registered_model_name
    model_hash = stage.hash_path(config.model_dir)
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        versions = []
    for mv in versions:
        if mv.tags.get("bertflow.model_hash") == model_hash:
            logger.info("register: %s v%s already holds this model; not registering it again", name, mv.version)
            promoted, reason = promote(client, config, str(mv.version))
            return _version_info(client, name, str(mv.version), promoted=promoted, reason=reason, reused=True)

    experiment_id = ensure_experiment(config.experiment_name, config.home)
    existing = client.get_run(config.run_id) if config.run_id else None
    run_args = {"run_id": config.run_id} if existing else {"experiment_id": experiment_id,
                                                           "run_name": config.run_name or name}
    with mlflow.start_run(**run_args):
        params: dict[str, str] = {}
        _flatten("", config.params, params)
        if existing:  # a param cannot be logged twice; the run's own values stand
            params = {k: v for k, v in params.items() if k not in existing.data.params}
        for chunk in range(0, len(params), 100):
            mlflow.log_params(dict(list(params.items())[chunk : chunk + 100]))
        scalar_metrics = {k: float(v) for k, v in config.metrics.items() if isinstance(v, (int, float))}
        last_step = 0
        if existing and "loss" in existing.data.metrics:  # training logged its history live
            last_step = max((m.step for m in client.get_metric_history(config.run_id, "loss")), default=0)
        elif config.metrics_history:
            for line in Path(config.metrics_history).read_text().splitlines():
                record = json.loads(line)
                step = last_step = int(record.pop("step"))
                mlflow.log_metrics({k: float(v) for k, v in record.items() if isinstance(v, (int, float))}, step=step)
        mlflow.log_metrics(scalar_metrics, step=last_step)  # the final figures, at the run's last step
        for path in config.artifacts:
            (mlflow.log_artifacts if Path(path).is_dir() else mlflow.log_artifact)(path)
        mlflow.set_tags({**config.tags, "bertflow.model_hash": model_hash, "bertflow.kind": config.kind})
        signature, example = _signature(config.kind, config.text_pair)
        model_config = {"kind": config.kind}
        if config.max_seq_length:
            model_config["max_seq_length"] = config.max_seq_length
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"model_dir": str(config.model_dir)},
            model_config=model_config,
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=name,
        )
        version = str(info.registered_model_version)
    for key, value in {**config.tags, "bertflow.model_hash": model_hash, "bertflow.kind": config.kind}.items():
        client.set_model_version_tag(name, version, key, value)
    for metric, value in scalar_metrics.items():
        client.set_model_version_tag(name, version, f"bertflow.metric.{metric}", str(value))
    promoted, reason = promote(client, config, version)
    logger.info("registered %s v%s (%s)", name, version, reason)
    return _version_info(client, name, version, promoted=promoted, reason=reason, reused=False)


def _requirements() -> list[str]:
    """Exact versions of what the pyfunc model imports; given explicitly so MLflow does not infer them by import."""
    from importlib.metadata import version

    torch_version = version("torch").split("+")[0]
    return [f"torch=={torch_version}", f"transformers=={version('transformers')}",
            f"tokenizers=={version('tokenizers')}", f"mlflow=={version('mlflow')}", "pandas"]


def load_registered_model(model_uri: str):
    """Load a registered model (`models:/name@champion`, `models:/name/3`) as an MLflow pyfunc."""
    return mlflow.pyfunc.load_model(model_uri)


def source_commit() -> str:
    """The git commit of the bertflow checkout in use, or "unknown" for an installed copy."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def lineage_tags(*, documents_dir: str | Path, examples_dir: str | Path, pretrain_dir: str | Path) -> dict[str, str]:
    """Tags that tie a model version to the exact corpus, tokenizer, shards, config and code that produced it."""
    documents_dir, examples_dir, pretrain_dir = Path(documents_dir), Path(examples_dir), Path(pretrain_dir)
    train_manifest = stage.read_json(examples_dir / "train" / "manifest.json")
    ingest_manifest = stage.read_json(documents_dir / "manifest.json")
    return {
        "bertflow.corpus_sources": json.dumps(ingest_manifest["config"]["sources"])[:5000],
        "bertflow.ingest_manifest_sha256": stage.hash_file(documents_dir / "manifest.json"),
        "bertflow.train_shards_manifest_sha256": stage.hash_file(examples_dir / "train" / "manifest.json"),
        "bertflow.validation_shards_manifest_sha256": stage.hash_file(examples_dir / "validation" / "manifest.json"),
        "bertflow.tokenizer_sha256": train_manifest["tokenizer_hash"],
        "bertflow.pretrain_stage_key": stage.read_json(pretrain_dir / stage.STAGE_RECORD)["key"],
        "bertflow.git_commit": source_commit(),
    }
