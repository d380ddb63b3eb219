"""MLflow model registry: register a stage's model and move aliases behind a promotion gate.

Where runs go and the pipeline's runs are `bert_core.tracking`'s. Each registered version carries lineage tags
(config hash, model hash, input manifests) and its evaluation metrics. A new version gets the alias `candidate`; it also becomes
`champion` when there is none yet or when its primary metric beats the champion's by `min_improvement`.
Registering the same model directory twice returns the existing version instead of a duplicate.

Promotion decisions for one registered model are serialised (`promotion_lock`: a file lock beside a local store;
the Prefect layer adds a global concurrency slot for servers shared by several machines), and a decision re-reads
the champion inside the lock: two pipelines finishing at once leave exactly one champion, the better one.
`rollback` moves `champion` back to a named version.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bert_core import stage
from bert_core.config import NonNegativeFloat, check_fields
from bert_core.downstream.kinds import DEFAULT_MODEL_KIND, model_kind
from bert_core.metrics import scalar_metrics
from bert_core.registry import signatures
from bert_core.registry.model_card import hub_card, model_card
from bert_core.stage import bertflow_home
from bert_core.tracking import PRECISION_TAG, configure_tracking, ensure_experiment, flatten_params, redact
from bert_core.training.model import HUB_CARD, model_description
from bert_core.training.model import model_hash as model_files_hash

logger = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).resolve().parent / "pyfunc_model.py"
CHAMPION, CANDIDATE = "champion", "candidate"


@dataclass(frozen=True, kw_only=True)
class RegisterConfig:
    model_dir: str
    registered_model_name: str
    # What the model is and how it reads its input; empty: what its directory describes (`model.describe_model`),
    # else a single-sentence classifier; the window, when neither says, is its kind's default.
    kind: str | None = None  # a model kind of `bert_core.downstream.kinds`: "classifier", ..., "pretrained"
    text_pair: bool | None = None  # a sentence-pair classifier: its pyfunc takes `text` and `text_pair` columns
    experiment_name: str = "bertflow"
    run_name: str | None = None
    primary_metric: str = "eval_accuracy"
    greater_is_better: bool = True
    min_improvement: NonNegativeFloat = 0.0
    max_seq_length: int | None = None  # the pyfunc's window (default: the model's description, else its kind's)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: tuple[str, ...] = ()
    metrics_history: str | None = None  # a metrics.jsonl whose per-step values are logged with their step
    run_id: str | None = None  # log into this existing run (e.g. the one training logged its metrics to)
    # The current champion's metrics on the same evaluation set as `metrics`, measured now; the gate compares with
    # these instead of the figures the champion was registered with (which may come from another dev set).
    champion_metrics: dict[str, float] | None = None
    champion_version: str | None = None  # the version `champion_metrics` were measured on
    # Version tags the champion must share for the figures to be comparable: held-out MLM losses of encoders with
    # different tokenizers measure different things ("bertflow.tokenizer_sha256").
    comparable_on: tuple[str, ...] = ()
    gate_evidence: dict[str, float] = field(default_factory=dict)  # e.g. the paired p-value, kept with the decision
    parent_run_id: str | None = None  # nest the registration run under this (pipeline) run
    description: str | None = None  # the model card; generated from the config and metrics when None
    task: str | None = None  # the catalogue task it was fine-tuned for: the Hub card's dataset and results
    license: str = "apache-2.0"  # the Hub card's license field (the weights' licence is the user's to set)
    home: str | None = None

    def __post_init__(self):
        check_fields(self)
        if self.kind is not None:
            model_kind(self.kind)  # an unknown kind is a ConfigError naming the known ones


def alias_version(model_uri: str, home: str | Path | None = None) -> str | None:
    """The version number a `models:/name@alias` URI points at now (None when the alias is not set)."""
    if not model_uri.startswith("models:/") or "@" not in model_uri:
        raise ValueError(f"expected models:/<name>@<alias>, got {model_uri!r}")
    name, alias = model_uri.removeprefix("models:/").rsplit("@", 1)
    configure_tracking(home)
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def registered_version(model: str, home: str | Path | None = None) -> tuple[str | None, str | None]:
    """(registered name, version) that a `models:/name@alias` or `models:/name/version` URI means now; the version
    is None when the alias is not set; (None, None) for anything else (a local directory, a package name)."""
    if not model.startswith("models:/"):
        return None, None
    ref = model.removeprefix("models:/")
    if "@" in ref:
        return ref.rsplit("@", 1)[0], alias_version(model, home)
    name, _, version = ref.rpartition("/")
    return name, version


def pin_model(model: str, home: str | Path | None = None) -> tuple[str | None, str | None, str]:
    """(name, version, `models:/name/version`) for a models:/ URI, an alias pinned to the version it points at now,
    so that a whole run uses one version; (None, None, model) for a local directory or a package name."""
    name, version = registered_version(model, home)
    if name is None:
        return None, None, model
    if version is None:
        raise ValueError(f"{model} is not set: register a model under that name first (the bert-pipeline flow does)")
    return name, version, f"models:/{name}/{version}"


def _version_info(client: MlflowClient, name: str, version: str, **extra) -> dict[str, Any]:
    mv = client.get_model_version(name, version)
    return {"name": name, "version": str(mv.version), "aliases": sorted(mv.aliases), "run_id": mv.run_id,
            "model_uri": f"models:/{name}/{mv.version}", **extra}


def _check_same_figures(config: RegisterConfig, mv) -> None:
    """A second registration of the same weights must bring the figures its version recorded (or none): a model
    is promoted on what was measured and recorded when it was registered, not on a number given later."""
    recorded = {k.removeprefix("bertflow.metric."): float(v) for k, v in mv.tags.items()
                if k.startswith("bertflow.metric.")}
    given = scalar_metrics(config.metrics)
    changed = {k: (recorded[k], v) for k, v in given.items()
               if k in recorded and not math.isclose(recorded[k], v, rel_tol=1e-9, abs_tol=1e-12)}
    added = sorted(set(given) - set(recorded))
    if changed or added:
        what = "; ".join([f"{k} {new} (recorded {old})" for k, (old, new) in sorted(changed.items())]
                         + [f"{k} {given[k]} (not recorded)" for k in added])
        raise ValueError(f"register: {config.model_dir} is already registered as {config.registered_model_name} "
                         f"v{mv.version} with other figures: {what}; expected the figures recorded on v{mv.version} "
                         "(a model directory is registered once, with what was measured on it)")


def _metric_of(client: MlflowClient, name: str, version: str, metric: str) -> float | None:
    value = client.get_model_version(name, version).tags.get(f"bertflow.metric.{metric}")
    return float(value) if value is not None else None


def _lock_dir(home: str | Path | None = None) -> Path:
    """Where promotion locks live: beside a local SQLite store, else under the data directory."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "locks"
    return (Path(home) if home else bertflow_home()) / "locks"


@contextmanager
def promotion_lock(name: str, home: str | Path | None = None, timeout_seconds: float = 600) -> Iterator[None]:
    """Hold the lock that serialises alias moves of registered model `name` among processes of this machine.

    MLflow has no compare-and-set on aliases: two processes that both read champion v1, both beat it and both set
    `champion` would leave whichever wrote last, possibly the worse model. Holding this lock around read-decide-set
    makes the second decision see the first one's outcome.
    """
    directory = _lock_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".lock")
    deadline = time.monotonic() + timeout_seconds
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {timeout_seconds:.0f} s for the promotion lock {path}") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promote(client: MlflowClient, config: RegisterConfig, version: str) -> tuple[bool, str]:
    """Give `version` the candidate alias; make it champion if it beats the current one. Return (promoted, why).

    Runs under `promotion_lock`: the champion is read, compared and replaced as one step.
    """
    with promotion_lock(config.registered_model_name, config.home):
        return _promote_locked(client, config, version)


def _promote_locked(client: MlflowClient, config: RegisterConfig, version: str) -> tuple[bool, str]:
    name = config.registered_model_name
    client.set_registered_model_alias(name, CANDIDATE, version)
    # The candidate's figure is the one recorded on its version, never a number handed in with this call.
    new = _metric_of(client, name, version, config.primary_metric)
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
    moved = ""
    if same_set and config.champion_version and str(config.champion_version) != str(champion.version):
        # Another run promoted a model between our evaluation and now: our same-set figure is for the old champion.
        same_set = False
        moved = f" (the champion moved from v{config.champion_version} since this model was evaluated)"
    if same_set:
        old = float(config.champion_metrics[config.primary_metric])
    for tag in config.comparable_on:
        mine, theirs = client.get_model_version(name, version).tags.get(tag), champion.tags.get(tag)
        if mine != theirs:
            return False, (f"{config.primary_metric} is not comparable with champion v{champion.version}'s: {tag} "
                           f"differs ({mine} vs {theirs}); the champion stays")
    for key, value in config.gate_evidence.items():
        client.set_model_version_tag(name, version, f"bertflow.gate.{key}", str(value))
    evidence = "".join(f", {k} {v:.3g}" for k, v in config.gate_evidence.items())
    if new is None:
        return False, f"version {version} has no {config.primary_metric}; champion v{champion.version} stays"
    if old is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return True, f"champion v{champion.version} has no {config.primary_metric}"
    gain = (new - old) if config.greater_is_better else (old - new)
    where = " on the same evaluation set" if same_set else f", as registered{moved}"
    if gain > config.min_improvement:
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "bertflow.promoted_over", str(champion.version))
        return True, f"{config.primary_metric} {new:.4f} beats champion v{champion.version} ({old:.4f}{where}{evidence})"
    return False, (f"{config.primary_metric} {new:.4f} does not beat champion v{champion.version} ({old:.4f}{where}"
                   f"{evidence}) by more than {config.min_improvement}")


def rollback(name: str, version: str | int, *, reason: str = "", home: str | Path | None = None) -> dict[str, Any]:
    """Move `champion` of registered model `name` back to `version` (an existing one); return what changed."""
    configure_tracking(home)
    client = MlflowClient()
    version = str(version)
    with promotion_lock(name, home):
        try:
            client.get_model_version(name, version)
        except MlflowException as error:
            raise ValueError(f"{name} has no version {version}") from error
        try:
            previous = str(client.get_model_version_by_alias(name, CHAMPION).version)
        except MlflowException:
            previous = None
        client.set_registered_model_alias(name, CHAMPION, version)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        client.set_model_version_tag(name, version, "bertflow.rollback",
                                     json.dumps({"from_version": previous, "at": stamp, "reason": reason}))
    logger.info("rollback: %s champion v%s -> v%s", name, previous, version)
    return {"name": name, "previous_champion": previous, "champion": version, "reason": reason,
            "model_uri": f"models:/{name}@{CHAMPION}"}


def with_model_description(config: RegisterConfig) -> RegisterConfig:
    """`config` with the kind, text pairs and window its model directory describes filled in where not given."""
    described = model_description(config.model_dir)
    if config.kind and described.get("kind") and config.kind != described["kind"]:
        raise ValueError(f"{config.model_dir} is a {described['kind']} model; RegisterConfig.kind says {config.kind}")
    text_pair = config.text_pair if config.text_pair is not None else bool(described.get("text_pair_column"))
    # The tokenizer an encoder was trained with (the pipeline's lineage tags say the same): the MLM-loss gate's test;
    # and the precision its training ran in ("auto" resolves per machine).
    tags = {**({"bertflow.tokenizer_sha256": described["tokenizer_sha256"]} if described.get("tokenizer_sha256") else {}),
            **({PRECISION_TAG: described["mixed_precision"]} if described.get("mixed_precision") else {}),
            **config.tags}
    return replace(config, kind=config.kind or described.get("kind", DEFAULT_MODEL_KIND), text_pair=text_pair,
                   max_seq_length=config.max_seq_length or described.get("max_seq_length"), tags=tags)


def pyfunc_config(config: RegisterConfig) -> dict[str, Any]:
    """What the pyfunc model reads at load time (it runs without bertflow, so it is told, not looked up): its kind,
    the transformers class that loads it, its window and, for kinds that slide a window, the stride."""
    spec = model_kind(config.kind)
    model_json = Path(config.model_dir) / "config.json"
    model_type = json.loads(model_json.read_text()).get("model_type") if model_json.is_file() else None
    max_seq_length = config.max_seq_length or spec.max_seq_length
    values = {"kind": config.kind, "model_class": spec.class_for(model_type), "max_seq_length": max_seq_length}
    stride = getattr(spec.config_class, "doc_stride", None)
    if stride is not None:  # at most half the window: a window always moves past a stride's overlap
        values["doc_stride"] = min(stride, max_seq_length // 2)
    return values


def register_model(config: RegisterConfig) -> dict[str, Any]:
    """Log a run with params, metrics, artifacts and the pyfunc model; register it; apply the promotion gate."""
    config = with_model_description(config)
    configure_tracking(config.home)
    client = MlflowClient()
    name = config.registered_model_name
    model_hash = model_files_hash(config.model_dir)
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        versions = []
    for mv in versions:
        if mv.tags.get("bertflow.model_hash") == model_hash:
            _check_same_figures(config, mv)
            logger.info("register: %s v%s already holds this model; not registering it again", name, mv.version)
            promoted, reason = promote(client, config, str(mv.version))
            return _version_info(client, name, str(mv.version), promoted=promoted, reason=reason, reused=True)

    experiment_id = ensure_experiment(config.experiment_name, config.home)
    existing = client.get_run(config.run_id) if config.run_id else None
    run_args = {"run_id": config.run_id} if existing else {
        "experiment_id": experiment_id, "run_name": config.run_name or name,
        "tags": {"mlflow.parentRunId": config.parent_run_id} if config.parent_run_id else None}
    tags = {k: redact(str(v)) for k, v in {**config.tags, "bertflow.model_hash": model_hash,
                                            "bertflow.config_sha256": stage.hash_json(stage.to_jsonable(config.params)),
                                            "bertflow.kind": config.kind}.items()}
    card = config.description or model_card(config, model_hash)
    # README.md in the model directory (`final/`): the Hub's card, logged with the model below.
    with stage.atomic_file(Path(config.model_dir) / HUB_CARD) as tmp:
        tmp.write_text(hub_card(config, model_hash))
    with mlflow.start_run(**run_args):
        params: dict[str, str] = {}
        flatten_params("", config.params, params)
        params = {k: redact(v) for k, v in params.items()}
        if existing:  # a param cannot be logged twice; the run's own values stand
            params = {k: v for k, v in params.items() if k not in existing.data.params}
        for chunk in range(0, len(params), 100):
            mlflow.log_params(dict(list(params.items())[chunk : chunk + 100]))
        final = scalar_metrics(config.metrics)
        last_step = 0
        if existing and "loss" in existing.data.metrics:  # training logged its history live
            last_step = max((m.step for m in client.get_metric_history(config.run_id, "loss")), default=0)
        elif config.metrics_history:
            for line in Path(config.metrics_history).read_text().splitlines():
                record = json.loads(line)
                step = last_step = int(record.pop("step"))
                mlflow.log_metrics(scalar_metrics(record), step=step)
        mlflow.log_metrics(final, step=last_step)  # the final figures, at the run's last step
        for path in config.artifacts:
            (mlflow.log_artifacts if Path(path).is_dir() else mlflow.log_artifact)(path)
        mlflow.set_tags(tags)
        mlflow.log_text(card, "model_card.md")
        signature, example = signatures.signature(config.kind, config.text_pair)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"model_dir": str(config.model_dir)},
            model_config=pyfunc_config(config),
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=name,
        )
        version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=card)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=card.split("\n## Evaluation")[0].strip()
                                       + "\n\nEach version carries its own model card, metrics and lineage tags.")
    for metric, value in final.items():
        client.set_model_version_tag(name, version, f"bertflow.metric.{metric}", str(value))
    promoted, reason = promote(client, config, version)
    logger.info("registered %s v%s (%s)", name, version, reason)
    return _version_info(client, name, version, promoted=promoted, reason=reason, reused=False)


def _requirements() -> list[str]:
    """Exact versions of what the pyfunc model imports; given explicitly so MLflow does not infer them by import."""
    torch_version = version("torch").split("+")[0]
    return [f"torch=={torch_version}", f"transformers=={version('transformers')}",
            f"tokenizers=={version('tokenizers')}", f"mlflow=={version('mlflow')}", "pandas"]


def load_registered_model(model_uri: str):
    """Load a registered model (`models:/name@champion`, `models:/name/3`) as an MLflow pyfunc."""
    return mlflow.pyfunc.load_model(model_uri)
