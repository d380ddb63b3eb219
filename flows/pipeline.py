"""Flow `bert-pipeline`: ingest -> tokenizer + NSP/MLM shards -> pretrain -> downstream suite (pretrained vs its
random-init twin) -> fine-tune -> evaluate -> register.

`python -m flows.pipeline` runs it on the bundled sample with the sample profile (`flows.SAMPLE_PROFILE`: a
bert-tiny, 8k vocabulary, 500 pretraining steps: a few minutes on 2 CPU cores) and prints a summary. Each stage's
settings are the parameters of that stage's flow, given as one object per stage (`ingest`, `examples`, `pretrain`,
`finetune`, `suite`): their names, types and defaults live in the stage flows (and their configs), not here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from pydantic import Field

from bert_core import stage
from bert_core.config import SEED, given
from bert_core.downstream.catalogue import get_task
from bert_core.metrics import eval_metrics
from bert_core.registry.summary import models_table, render_summary
from bert_core.stage import bertflow_home, default_work_dir
from bert_core.tracking import configure_tracking, lineage_tags, manifest_metrics, redact, ui_links
from bert_core.training.model import pretrained_model_name
from deployments import deployment_parameters
from flows.cluster import data_cluster
from flows.evaluate import evaluate_flow
from flows.examples import examples_flow
from flows.finetune import finetune_flow
from flows.ingest import ingest_flow
from flows.parameters import (SAMPLE_PROFILE, IngestParameters, SampleExamples, SampleFinetune, SamplePretrain,
    SuiteParameters)
from flows.pretrain import pretrain_flow
from flows.register import encoder_registered_name, register_flow
from flows.suite import encoder_gate, suite_flow
from tasks.registry import finish_run, log_manifests, log_stage_run, parent_run


@flow(name="bert-pipeline")
def bert_pipeline(
    sources: list[str] | None = None,
    work_dir: str | None = None,
    task_name: str = "sst2",
    task_file: str | None = None,
    task_train_file: str | None = None,
    task_validation_file: str | None = None,
    ingest: IngestParameters | None = None,
    examples: SampleExamples | None = None,
    pretrain: SamplePretrain | None = None,
    finetune: SampleFinetune | None = None,
    suite: SuiteParameters | Literal["off"] | None = None,
    data_workers: Annotated[int, Field(ge=1)] = 1,
    dask_address: str | None = None,
    registered_model_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "bertflow",
    min_improvement: Annotated[float, Field(ge=0.0)] = 0.0,
    seed: int = SEED,
) -> dict:
    """Raw text to registered, evaluated BERT models. Defaults run on the bundled sample in a few minutes on CPU.

    Args:
        sources: Corpus files, directories, globs or `hf:NAME:CONFIG:SPLIT` datasets; empty: the bundled sample.
        work_dir: Where stage outputs go; empty: `$BERTFLOW_HOME/work`.
        task_name: sst2, imdb, mrpc, rte (classification), conll2003 (NER), squad (extractive QA), or a name of your
            own: defined in `task_file` or `$BERTFLOW_HOME/tasks/<name>.json|yaml` (kind, columns, labels, files), else
            a sentence classification (then give the files and `finetune` columns). sst2, mrpc and squad ship a sample.
        task_file: A JSON/YAML file of task catalogue entries (see bert_core.downstream.catalogue) that defines `task_name`.
        task_train_file: Fine-tuning training file (TSV/CSV/JSON/JSONL/Parquet, CoNLL, SQuAD JSON).
        task_validation_file: Dev file: the fine-tuned model and the current champion are both scored on it; its
            texts are always kept out of the pretraining corpus.
        ingest: The IngestConfig fields this run changes, e.g. {"validation_fraction": 0.1, "decontamination_files":
            [...], "cleaning": {"min_chars": 100}}.
        examples: The ExamplesConfig fields this run changes, e.g. {"max_seq_length": 128, "masking": "dynamic",
            "tokenizer": {"vocab_size": 30522}, "mlm": {"mlm_probability": 0.15}}; the sample profile sets
            tokenizer.vocab_size 8192.
        pretrain: The PretrainConfig fields this run changes, e.g. {"preset": "bert-mini", "max_train_steps": 2000};
            the sample profile sets learning_rate 1e-3, 500 steps, 50 warm-up, evaluation and checkpoints every 100.
        finetune: The FinetuneConfig fields this run changes, e.g. {"learning_rate": 5e-4, "num_train_epochs": 3,
            "max_seq_length": 128, "text_column": ...}; the sample profile sets learning_rate 5e-4.
        suite: The SuiteConfig fields this run changes, e.g. {"size": "tiny"} or {"size": "full", "data_dir":
            "../shared/data/tasks"}: the encoder and its random-init twin fine-tuned alike; its suite score is the
            encoder's promotion gate (against the champion's on the same suite). "off": no suite; the gate is then
            held-out MLM loss, between encoders of the same tokenizer only.
        data_workers: Processes for ingest and example generation: above 1, one local Dask cluster of that many
            single-threaded workers, started once for both stages.
        dask_address: An existing Dask scheduler (tcp://host:8786) to run the data stages on instead; its workers
            report their Prefect tasks to this run's API (start them with `--nthreads 1` and RAYON_NUM_THREADS=1).
        registered_model_prefix: MLflow names are `<prefix>-<model>` (bertflow-bert-tiny, bertflow-modernbert-tiny)
            and `<prefix>-<task_name>`.
        min_improvement: A new model becomes champion only when it beats the champion by more than this.
        seed: Random seed of every stage: ingest's validation split, the examples, pretraining, fine-tuning.
    """
    started, work = time.perf_counter(), default_work_dir(work_dir)
    task = get_task(task_name, task_file)
    train_file, validation_file = task.files(task_train_file, task_validation_file)
    stages = {name: given(values, SAMPLE_PROFILE.get(name)) for name, values in
              (("ingest", ingest), ("examples", examples), ("pretrain", pretrain), ("finetune", finetune),
               ("suite", None if suite == "off" else suite))}
    with parent_run("bert-pipeline", "pipeline") as run_id:  # every stage's MLflow run nests under this one
        # The task's dev texts are always kept out of the pretraining corpus.
        keep_out = [*task.decontamination_specs(validation_file, stages["finetune"].get("text_column")),
                    *(stages["ingest"].pop("decontamination_files", None) or [])]
        with data_cluster(data_workers, dask_address) as (address, _):  # one Dask cluster for both data stages
            data = dict(work_dir=str(work), seed=seed, n_workers=data_workers, dask_address=address)
            documents_dir = ingest_flow(sources=sources, ingest={**stages["ingest"], "decontamination_files": keep_out},
                                        **data)
            corpus = log_manifests(run_id, "ingest", documents_dir)
            examples_dir = examples_flow(documents_dir=documents_dir, examples=stages["examples"], **data)
            manifests = log_manifests(run_id, "examples", examples_dir)
        pretrained = pretrain_flow(shards_dir=examples_dir, work_dir=str(work), seed=seed,
                                   mlflow_parent_run_id=run_id, pretrain=stages["pretrain"])
        _log_reused(run_id, pretrained)
        encoder_name = encoder_registered_name(registered_model_prefix, pretrained["final_dir"])
        gate = None
        if suite != "off":
            report = suite_flow(encoder=pretrained["final_dir"], work_dir=str(work), suite=stages["suite"])
            gate = {**encoder_gate(report, encoder_name, stages["suite"], str(work)), "report": report}
        finetuned = finetune_flow(model_name_or_path=pretrained["final_dir"], task_name=task_name, task_file=task_file,
                                  train_file=train_file, validation_file=validation_file, work_dir=str(work),
                                  seed=seed, finetune=stages["finetune"])
        evaluation = evaluate_flow(
            pretrained_dir=pretrained["final_dir"], validation_shards_dir=str(Path(examples_dir) / "validation"),
            report_dir=str(work / "reports"), pretrain_metrics_file=str(_run_dir(pretrained) / "metrics.jsonl"),
            classifier_dir=finetuned["final_dir"], classifier_data_file=validation_file,
            champion_model_uri=f"models:/{registered_model_prefix}-{task_name}@champion")
        figures = _evaluation_figures(run_id, pretrained, evaluation, gate)
        registered = register_flow(
            pretrained_dir=pretrained["final_dir"], pretrained_registered_name=encoder_name,
            pretrained_metrics=figures["pretrained"], classifier_dir=finetuned["final_dir"], task_name=task_name,
            pretrained_champion_metrics=gate and gate["champion_metrics"],
            pretrained_champion_version=gate and gate["champion_version"],
            pretrained_gate_evidence=gate and gate["evidence"],
            classifier_metrics=figures["classifier"], primary_metric=task.primary_metric,
            champion_metrics=figures["champion"], champion_version=evaluation["champion_version"],
            lineage=lineage_tags(documents_dir=documents_dir, examples_dir=examples_dir,
                                 pretrain_dir=_run_dir(pretrained)),
            classifier_tags={"bertflow.task_train_file": train_file, "bertflow.task_validation_file": validation_file},
            params={"pretrain": _stage_config(pretrained), "finetune": _stage_config(finetuned)},
            pretrain_metrics_file=str(_run_dir(pretrained) / "metrics.jsonl"),
            finetune_metrics_file=str(_run_dir(finetuned) / "metrics.jsonl"),
            pretrained_artifacts=[*evaluation["pretrained_reports"], str(Path(examples_dir) / "train" / "manifest.json"),
                                  str(Path(documents_dir) / "manifest.json"), *_suite_files(gate)],
            classifier_artifacts=evaluation["classifier_reports"], registered_model_prefix=registered_model_prefix,
            min_improvement=min_improvement, pretrain_run_id=pretrained.get("mlflow_run_id"), parent_run_id=run_id)
    summary = {"work_dir": str(work), "flow_run_id": str(flow_run.get_id()), "mlflow_run_id": run_id,
               "tracking_uri": redact(configure_tracking()), "corpus": corpus, "examples": manifests,
               "pretrained": figures["pretrained"], "classifier": figures["classifier"],
               "task": {"name": task_name, "kind": task.model_kind, "primary_metric": task.primary_metric,
                        "pairs": bool(task.text_pair_column)},
               "comparison": evaluation["comparison"], "registered": registered,
               "suite": gate and {"report": gate["report"], "champion_version": gate["champion_version"],
                                  "vs_champion": gate.get("comparison")},
               "seconds": round(time.perf_counter() - started, 1)}
    _finish(summary)
    return summary


def _run_dir(result: dict) -> Path:
    """A training stage's output directory (where its metrics.jsonl and stage.json are), from its final/ path."""
    return Path(result["final_dir"]).parent


def _stage_config(result: dict) -> dict:
    return stage.read_json(_run_dir(result) / stage.STAGE_RECORD)["config"]


def _log_reused(run_id: str, pretrained: dict) -> None:
    """An encoder up to date from an earlier pipeline run: a stage run that points at the run that trained it."""
    if pretrained.get("reused"):
        name = pretrained_model_name(pretrained["final_dir"])
        log_stage_run(run_id, f"pretrain-{name}", str(_run_dir(pretrained)),
                      metrics=manifest_metrics(pretrained),
                      tags={"bertflow.reused_run_id": pretrained.get("mlflow_run_id") or ""})


def _suite_files(gate: dict | None) -> list[str]:
    """The suite's report files (JSON, markdown, the per-task plot), logged with the encoder's registered version."""
    if not gate:
        return []
    out = Path(gate["report"]["output_dir"])
    return [str(out / name) for name in ("report.json", "report.md", "report.png")]


def _evaluation_figures(run_id: str, pretrained: dict, evaluation: dict, gate: dict | None) -> dict:
    """The evaluation as MLflow metric names (`eval_*`; the champion's on the same dev set; the encoder's suite
    figures `suite_*`), logged as the pipeline's evaluate stage run."""
    held_out = {**evaluation["pretrained"], "initial_eval_mlm_loss": pretrained["initial_eval_mlm_loss"]}
    figures = {
        "pretrained": {**eval_metrics(held_out), **(gate["metrics"] if gate else {})},
        "classifier": eval_metrics(evaluation["classifier"]),
        "champion": eval_metrics(evaluation["champion"]) if evaluation["champion"] else None,
    }
    log_stage_run(run_id, "evaluate", metrics={**figures["pretrained"], **figures["classifier"],
                                               **{f"champion_{k}": v for k, v in (figures["champion"] or {}).items()}},
                  artifacts=[*evaluation["pretrained_reports"], *evaluation["classifier_reports"]],
                  tags={"bertflow.champion_version": evaluation["champion_version"] or "none"})
    return figures


def _finish(summary: dict) -> None:
    """End the parent MLflow run with the final figures and the registered versions; the Prefect artifacts."""
    registered = summary["registered"]
    finish_run(summary["mlflow_run_id"], metrics={**summary["classifier"], **summary["pretrained"]},
               tags={f"bertflow.registered.{info['name']}": info["version"]
                     for info in (registered["pretrained"], registered["classifier"]) if info})
    summary["mlflow_links"] = _links(summary)
    create_markdown_artifact(key="pipeline-summary", markdown=render_summary(summary, markdown=True),
                             description="bert-pipeline summary")
    create_table_artifact(key="pipeline-models", table=models_table(summary),
                          description="Models this run registered, their aliases and the promotion decision")


def _links(summary: dict) -> dict[str, str]:
    registered = summary["registered"]
    links = {"pipeline_run": ui_links(summary["mlflow_run_id"])["run"]}
    for info in (registered["pretrained"], registered["classifier"]):
        if info:
            links[info["name"]] = ui_links(model=(info["name"], info["version"]))["model_version"]
    return links


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run bert-pipeline (defaults: the bundled sample).")
    parser.add_argument("--deployment", type=str, default=None,
                        help="start from the parameters of this deployment in deployments/prefect.yaml (e.g. "
                             "recipe-modernbert-mini; its paths are relative to the working directory)")
    parser.add_argument("--params", type=str, default=None, help="JSON object of flow parameters to override")
    parser.add_argument("--summary-json", type=Path, default=None, help="also write the summary as JSON here")
    args = parser.parse_args(argv)
    params = deployment_parameters(args.deployment) if args.deployment else {}
    params.update(json.loads(args.params) if args.params else {})
    summary = bert_pipeline(**params)
    if args.summary_json:
        stage.write_json(args.summary_json, summary)
    print("\n" + render_summary(summary))
    print(f"data directory: {bertflow_home()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
