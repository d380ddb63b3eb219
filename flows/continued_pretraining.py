"""Flow `continued-pretraining`: go on pretraining the champion encoder on newly ingested text.

The nightly deployment runs it. It ingests the new sources, writes shards with the champion's own tokenizer (so the
vocabulary and the weights still fit), pretrains from the champion's weights, and scores the new model and the
champion on the same held-out shards of the new text; the new version becomes champion only when its held-out MLM
loss is lower by more than `min_improvement`. Nothing new to read means every stage is up to date: a rerun costs
seconds and registers nothing new.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from bert_core import stage
from bert_core.config import SEED, given
from bert_core.examples.generation import ExamplesConfig
from bert_core.metrics import eval_metrics
from bert_core.registry import records
from bert_core.registry.registration import pin_model
from bert_core.stage import default_work_dir
from bert_core.tracking import ui_links
from bert_core.training.model import model_description, model_hash, resolve_model
from bert_core.training.pretrain import PretrainConfig
from flows.examples import examples_flow
from flows.ingest import ingest_flow
from flows.parameters import (CONTINUED_PROFILE, ContinuedExamples, ContinuedPretrain, IngestParameters,
    SuiteParameters)
from flows.pretrain import pretrain_flow
from flows.register import register_flow
from flows.suite import encoder_gate, suite_flow
from tasks.evaluate import evaluate_pretrained
from tasks.registry import finish_run, log_manifests, log_stage_run, parent_run


@flow(name="continued-pretraining")
def continued_pretraining(
    sources: list[str] | None = None,
    base_model: str = "models:/bertflow-bert-tiny@champion",
    work_dir: str | None = None,
    ingest: IngestParameters | None = None,
    examples: ContinuedExamples | None = None,
    pretrain: ContinuedPretrain | None = None,
    registered_model_name: str | None = None,
    min_improvement: Annotated[float, Field(ge=0.0)] = 0.0,
    suite: SuiteParameters | None = None,
    seed: int = SEED,
) -> dict:
    """Continue pretraining the registered champion on new text; promote the result only if it is better.

    Args:
        sources: The newly ingested text: files, directories, globs or `hf:` datasets; empty: the bundled sample.
        base_model: The encoder to continue from: `models:/<name>@champion`, `models:/<name>/<version>` or a
            local `final/` directory.
        work_dir: Where stage outputs go; empty: `$BERTFLOW_HOME/work/continued`.
        ingest: The IngestConfig fields this run changes, e.g. {"validation_fraction": 0.1}: the held-out share
            scores the new model and the champion.
        examples: The ExamplesConfig fields this run changes, e.g. {"max_seq_length": 128} (at most the base
            model's positions); the tokenizer and the pair objective are the base model's.
        pretrain: The PretrainConfig fields this run changes, e.g. {"max_train_steps": 200, "learning_rate": 5e-5};
            the size and architecture are the base model's. Defaults: 500 steps, 50 warm-up, the config's learning
            rate (lower than the sample's from scratch: the weights are trained already); evaluation at the end and
            a checkpoint half-way unless given.
        registered_model_name: MLflow name of the result; empty: the base model's registered name (a local
            directory needs one).
        min_improvement: The new version must lower the held-out MLM loss (or raise the suite score) by more than
            this to become champion.
        suite: The SuiteConfig fields this run changes, e.g. {"size": "default"}: the new encoder and the
            champion on the same suite, and the suite score decides (the MLM losses are still reported); empty: the
            held-out MLM loss on the new text decides.
        seed: Random seed of every stage.
    """
    started = time.perf_counter()
    work = Path(work_dir) if work_dir else default_work_dir(None) / "continued"
    # Pinned to the version the alias points at now, and copied to a directory named by its content: the stage
    # keys of the shards and of pretraining then stay the same from one night to the next while the base does.
    base_name, base_version, pinned = pin_model(base_model)
    base_dir = _stable_copy(resolve_model(pinned), work / "base-models")
    name = registered_model_name or base_name
    if not name:
        raise ValueError("base_model is a local directory: give registered_model_name")
    with parent_run("continued-pretraining", "continued-pretraining", {"bertflow.base_model": base_model}) as run_id:
        documents_dir = ingest_flow(sources=sources, work_dir=str(work), ingest=ingest, seed=seed)
        log_manifests(run_id, "ingest", documents_dir)
        # The base model's own tokenizer and pair objective (a ModernBERT base has no pair head).
        examples_dir = examples_flow(documents_dir=documents_dir, work_dir=str(work), seed=seed, examples={
            **given(examples), "tokenizer": {"tokenizer_path": base_dir},
            "pair_objective": model_description(base_dir).get("pair_objective", ExamplesConfig.pair_objective)})
        pretrained = pretrain_flow(shards_dir=examples_dir, work_dir=str(work), seed=seed, mlflow_parent_run_id=run_id,
                                   pretrain=_from_base(base_dir, pretrain))
        new_metrics, base_metrics = _score_both(run_id, pretrained["final_dir"], base_dir, examples_dir)
        gate = None
        if suite is not None:
            report = suite_flow(encoder=pretrained["final_dir"], work_dir=str(work), suite=suite)
            gate = encoder_gate(report, name, suite, str(work))
        # With a suite, the suite decides; else the held-out MLM loss, against the base measured now on the same shards.
        champion = (gate["champion_metrics"], gate["champion_version"]) if gate else (
            base_metrics if base_version else None, base_version)
        info = register_flow(
            pretrained["final_dir"], records.encoder_gate(
                {**new_metrics, **(gate["metrics"] if gate else {})}, *champion, gate and gate["evidence"],
                tuple(gate["files"]) if gate else ()),
            name, min_improvement, run_id, base_model + (f" (v{base_version})" if base_version else ""))
    finish_run(run_id, metrics=new_metrics)
    summary = {"base_model": base_model, "base_version": base_version, "registered": info,
               "suite": gate and gate["metrics"],
               "eval_mlm_loss": new_metrics["eval_mlm_loss"], "base_eval_mlm_loss": base_metrics["eval_mlm_loss"],
               "mlflow_run_id": run_id, "seconds": round(time.perf_counter() - started, 1)}
    _summary_artifact(summary)
    return summary


def _from_base(base_dir: str, pretrain) -> dict:
    """The run's PretrainConfig fields over the continued profile, with the base's size, architecture and weights;
    evaluation at the end and a checkpoint half-way unless given."""
    settings = given(pretrain, CONTINUED_PROFILE["pretrain"])
    steps = settings["max_train_steps"]
    return {"eval_steps": steps, "checkpointing_steps": max(1, steps // 2), **settings, "preset": _preset_of(base_dir),
            "init_from": base_dir,
            "architecture": model_description(base_dir).get("architecture", PretrainConfig.architecture)}


def _score_both(run_id: str, final_dir: str, base_dir: str, examples_dir: str) -> tuple[dict, dict]:
    """The new model and the base on the same held-out shards of the new text, logged as the evaluate stage run."""
    validation = str(Path(examples_dir) / "validation")
    new_metrics = eval_metrics(evaluate_pretrained(final_dir, validation))
    base_metrics = eval_metrics(evaluate_pretrained(base_dir, validation))
    log_stage_run(run_id, "evaluate", metrics={**new_metrics, **{f"base_{k}": v for k, v in base_metrics.items()}})
    return new_metrics, base_metrics


def _summary_artifact(summary: dict) -> None:
    info = summary["registered"]
    links = {**ui_links(summary["mlflow_run_id"]), **ui_links(model=(info["name"], info["version"]))}
    create_markdown_artifact(key="continued-pretraining-summary", description="continued-pretraining summary",
                             markdown=(f"Held-out MLM loss on the new text: **{summary['eval_mlm_loss']:.4f}** "
                                       f"(base {summary['base_model']}: {summary['base_eval_mlm_loss']:.4f}).\n\n"
                                       f"{info['name']} v{info['version']}, aliases {info['aliases']}: "
                                       f"{info['reason']}.\n\n- [MLflow run]({links['run']})\n"
                                       f"- [model version]({links['model_version']})\n"))


def _stable_copy(model_dir: str, root: Path) -> str:
    import shutil

    target = root / model_hash(model_dir)[:16]
    if not (target / "config.json").is_file():
        tmp = root / f".tmp-{target.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model_dir, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return str(target)


def _preset_of(model_dir: str) -> str:
    """The preset whose sizes match a saved model's config (the pretraining output directory is named by it)."""
    from bert_core.training.model import PRESETS

    config = stage.read_json(Path(model_dir) / "config.json")
    for preset, sizes in PRESETS.items():
        if all(config.get(k) == v for k, v in sizes.items()):
            return preset
    raise ValueError(f"{model_dir}: its sizes match no preset")
