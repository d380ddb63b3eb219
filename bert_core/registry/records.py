"""Registration from what a trained model already says about itself.

A training stage writes its model into `<run>/final/` with a description (kind, task, files, base model; see
`bert_core.training.model.describe_model`), beside the run's stage record (its config), its metrics.jsonl and the
MLflow run it logged to. A pretraining record names its shards, whose record names the corpus they were made
from. From these, `register_config` builds the whole `RegisterConfig`: name, run, task, params, lineage tags,
metric history and manifests. The caller gives only what the model cannot know: the `Gate` (the figures the
promotion gate compares, measured now, and the champion's on the same data), the registered name, the margin, the
parent run and, optionally, the model it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from bert_core import stage
from bert_core.metrics import scalar_metrics
from bert_core.registry.registration import RegisterConfig
from bert_core.tracking import lineage_tags
from bert_core.training.model import model_description, pretrained_model_name

PRETRAIN_STAGE = "pretrain"  # the stage record's name for pretraining (fine-tuning runs are named by their kind)
TOKENIZER_TAG = "bertflow.tokenizer_sha256"


@dataclass(frozen=True, kw_only=True)
class Gate:
    """What a model's promotion gate compares: the candidate's figures, measured now, and the champion's on the
    same data (None: take the figures the champion was registered with), with the evidence kept on the version."""

    metrics: dict[str, float]  # the candidate's figures, logged with it; `primary_metric` among them decides
    primary_metric: str
    greater_is_better: bool = True
    champion_metrics: dict[str, float] | None = None
    champion_version: str | None = None  # the version `champion_metrics` were measured on
    comparable_on: tuple[str, ...] = ()  # version tags a champion must share for the figures to compare
    evidence: dict[str, float] = field(default_factory=dict)  # e.g. the suite's paired p-value
    artifacts: tuple[str, ...] = ()  # reports logged with the version


def encoder_gate(metrics: dict, champion_metrics: dict | None = None, champion_version: str | None = None,
                 evidence: dict | None = None, artifacts: tuple[str, ...] = ()) -> Gate:
    """An encoder's gate: its downstream suite score when `metrics` hold one, else its held-out MLM loss, which
    compares only between encoders of the same tokenizer."""
    suite = "suite_score" in metrics
    return Gate(metrics=scalar_metrics(metrics), primary_metric="suite_score" if suite else "eval_mlm_loss",
                greater_is_better=suite, comparable_on=() if suite else (TOKENIZER_TAG,),
                champion_metrics=champion_metrics, champion_version=champion_version, evidence=evidence or {},
                artifacts=tuple(artifacts))


def registered_name(prefix: str, model_dir: str | Path) -> str:
    """A model's MLflow name: `<prefix>-<task>` for a task model (bertflow-sst2), `<prefix>-<model name>` for an
    encoder (bertflow-bert-tiny, bertflow-modernbert-tiny)."""
    task = model_description(model_dir).get("task")
    return f"{prefix}-{task}" if task else f"{prefix}-{pretrained_model_name(model_dir)}"


def register_config(model_dir: str | Path, gate: Gate, registered_model_name: str, *, min_improvement: float = 0.0,
                    parent_run_id: str | None = None, parent_model: str | None = None) -> RegisterConfig:
    """The RegisterConfig of the model in `model_dir` (a run's `final/`), read from it and its run's records."""
    final = Path(model_dir)
    run_dir = final.parent
    record = stage.read_json(run_dir / stage.STAGE_RECORD)
    described = model_description(final)
    history = run_dir / "metrics.jsonl"
    config = RegisterConfig(
        model_dir=str(final), registered_model_name=registered_model_name, kind=described.get("kind"),
        primary_metric=gate.primary_metric, greater_is_better=gate.greater_is_better, comparable_on=gate.comparable_on,
        min_improvement=min_improvement, metrics=scalar_metrics(gate.metrics), champion_metrics=gate.champion_metrics,
        champion_version=gate.champion_version, gate_evidence=gate.evidence, params=record["config"],
        artifacts=tuple(gate.artifacts), metrics_history=str(history) if history.is_file() else None,
        parent_run_id=parent_run_id)
    if record["stage"] == PRETRAIN_STAGE:
        tags, manifests = _lineage(run_dir, record)
        run_file = run_dir / "mlflow_run.json"
        return replace(config, run_name=f"pretrain-{pretrained_model_name(final)}",
                       tags={**tags, **({"bertflow.base_model": parent_model} if parent_model else {})},
                       artifacts=(*config.artifacts, *manifests),
                       run_id=stage.read_json(run_file)["run_id"] if run_file.is_file() else None)
    # Fine-tuned from a local pretraining run (not a models:/ URI or a package): that run's lineage.
    base_run = Path(described["base_model"]).parent if described.get("base_model") else None
    base_record = stage.read_json(base_run / stage.STAGE_RECORD) if base_run and \
        (base_run / stage.STAGE_RECORD).is_file() else {}
    lineage = _lineage(base_run, base_record)[0] if base_record.get("stage") == PRETRAIN_STAGE else {}
    tags = {**lineage, "bertflow.task_train_file": described.get("train_file", ""),
            "bertflow.task_validation_file": described.get("validation_file", ""),
            "bertflow.parent_model": parent_model or described.get("base_model", "")}
    return replace(config, task=described.get("task"), run_name=f"finetune-{described.get('task')}", tags=tags)


def _lineage(run_dir: Path, record: dict) -> tuple[dict[str, str], list[str]]:
    """A pretraining run's lineage tags and the manifests to log: the shards it was trained on (its `record` names
    them) and the corpus they were made of (theirs names it)."""
    examples_dir = Path(record["config"]["shards_dir"])
    documents_dir = stage.read_json(examples_dir / stage.STAGE_RECORD)["outputs"].get("documents_dir")
    tags = lineage_tags(documents_dir=documents_dir, examples_dir=examples_dir, pretrain_dir=run_dir)
    manifests = [examples_dir / "train" / "manifest.json", *([Path(documents_dir) / "manifest.json"] if documents_dir
                                                             else [])]
    return tags, [str(m) for m in manifests]
