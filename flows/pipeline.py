"""Flow `bert-pipeline`: ingest -> tokenizer + NSP/MLM shards -> pretrain -> fine-tune -> evaluate -> register.

`python -m flows.pipeline` runs it with the defaults below, which are sized for the bundled sample (a bert-tiny,
8k vocabulary, 500 pretraining steps: a few minutes on 2 CPU cores) and prints a summary. Fine-tuning parameters
that share a name with a pretraining one carry a `finetune_` prefix here; in the fine-tune flow and its config they
have their plain Hugging Face names.
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
from bert_core.catalogue import get_task
from bert_core.config import SEED
from bert_core.examples import ExamplesConfig
from bert_core.finetune import FinetuneConfig
from bert_core.ingest import IngestConfig
from bert_core.masking import MaskingConfig
from bert_core.pretrain import PretrainConfig
from bert_core.tokenizer import TokenizerConfig
from bert_core.metrics import scalar_metrics
from bert_core.stage import bertflow_home
from bert_core.tracking import configure_tracking, lineage_tags, redact, ui_links
from flows import (Fraction, LearningRate, MixedPrecision, NonNegativeInt, PairObjective, PositiveInt, Preset,
                   SeqLength, default_work_dir, manifest_metrics, sample_default)
from flows.evaluate import evaluate_flow
from flows.examples import examples_flow
from flows.finetune import finetune_flow
from flows.ingest import ingest_flow
from flows.pretrain import pretrain_flow
from flows.register import register_flow
from tasks.registry import finish_run, log_stage_run, parent_run


@flow(name="bert-pipeline")
def bert_pipeline(
    sources: list[str] | None = None,
    work_dir: str | None = None,
    validation_fraction: Fraction = IngestConfig.validation_fraction,
    decontamination_files: list[str] | None = None,
    data_workers: PositiveInt = 1,
    dask_address: str | None = None,
    vocab_size: Annotated[int, Field(ge=200, le=250_000)] = sample_default(TokenizerConfig, "vocab_size"),
    max_seq_length: SeqLength = ExamplesConfig.max_seq_length,
    dupe_factor: PositiveInt = ExamplesConfig.dupe_factor,
    pair_objective: PairObjective = ExamplesConfig.pair_objective,
    masking: Literal["static", "dynamic"] = ExamplesConfig.masking,
    mlm_probability: Annotated[float, Field(gt=0.0, lt=1.0)] = MaskingConfig.mlm_probability,
    whole_word_mask: bool = MaskingConfig.whole_word_mask,
    preset: Preset = PretrainConfig.preset,
    per_device_train_batch_size: PositiveInt = PretrainConfig.per_device_train_batch_size,
    gradient_accumulation_steps: PositiveInt = PretrainConfig.gradient_accumulation_steps,
    learning_rate: LearningRate = sample_default(PretrainConfig, "learning_rate"),
    num_warmup_steps: NonNegativeInt = sample_default(PretrainConfig, "num_warmup_steps"),
    max_train_steps: PositiveInt = sample_default(PretrainConfig, "max_train_steps"),
    eval_steps: PositiveInt = sample_default(PretrainConfig, "eval_steps"),
    checkpointing_steps: PositiveInt = sample_default(PretrainConfig, "checkpointing_steps"),
    mixed_precision: MixedPrecision = PretrainConfig.mixed_precision,
    num_processes: PositiveInt = PretrainConfig.num_processes,
    task_name: str = "sst2",
    task_file: str | None = None,
    task_train_file: str | None = None,
    task_validation_file: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    finetune_learning_rate: LearningRate = sample_default(FinetuneConfig, "learning_rate"),
    finetune_num_train_epochs: PositiveInt = FinetuneConfig.num_train_epochs,
    finetune_max_train_steps: PositiveInt | None = None,
    registered_model_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "bertflow",
    min_improvement: Annotated[float, Field(ge=0.0)] = 0.0,
    seed: int = SEED,
) -> dict:
    """Raw text to registered, evaluated BERT models. Defaults run on the bundled sample in a few minutes on CPU.

    Args:
        sources: Corpus files, directories, globs or `hf:NAME:CONFIG:SPLIT` datasets; empty: the bundled sample.
        work_dir: Where stage outputs go; empty: `$BERTFLOW_HOME/work`.
        validation_fraction: Share of documents held out for the pretraining evaluation.
        decontamination_files: Extra `path::columns` whose texts are removed from the corpus (the task's dev set
            always is).
        data_workers: Processes for ingest and example generation (a local Dask cluster when above 1).
        dask_address: An existing Dask scheduler (tcp://host:8786) to run data stages on instead.
        vocab_size: WordPiece vocabulary size of the tokenizer trained on the corpus.
        max_seq_length: Tokens per pretraining example and per fine-tuning input (QA uses 384).
        dupe_factor: How many differently masked copies of the corpus to write.
        pair_objective: nsp (BERT next sentence), sop (ALBERT sentence order) or none (MLM only).
        masking: static (masks written into the shards) or dynamic (masked anew in every training batch).
        mlm_probability: Share of the maskable tokens a training example predicts.
        whole_word_mask: Mask all pieces of a word together.
        preset: Model size, from bert-tiny (2 layers, 128 wide) to bert-large (24 layers, 1024 wide).
        per_device_train_batch_size: Pretraining examples per device per step.
        gradient_accumulation_steps: Steps whose gradients are summed before one optimizer update.
        learning_rate: Peak pretraining learning rate.
        num_warmup_steps: Linear warm-up steps of the pretraining schedule.
        max_train_steps: Pretraining optimizer steps.
        eval_steps: Held-out MLM/NSP evaluation every this many steps.
        checkpointing_steps: A resumable checkpoint every this many steps.
        mixed_precision: no, bf16 (CPUs with bf16 units, Ampere+ GPUs) or fp16 (GPUs).
        num_processes: Training processes (one per GPU).
        task_name: sst2, imdb, mrpc, rte (classification), conll2003 (NER), squad (extractive QA), or a name of your
            own: defined in `task_file` or `$BERTFLOW_HOME/tasks/<name>.json|yaml` (kind, columns, labels, files), else
            a sentence classification (then give the files and columns). sst2, mrpc and squad ship a sample.
        task_file: A JSON/YAML file of task catalogue entries (see bert_core.catalogue) that defines `task_name`.
        task_train_file: Fine-tuning training file (TSV/CSV/JSON/JSONL/Parquet, CoNLL, SQuAD JSON).
        task_validation_file: Dev file: the fine-tuned model and the current champion are both scored on it.
        text_column: Text column of the task files; empty: the task's own.
        label_column: Label column of the task files; empty: the task's own.
        finetune_learning_rate: Fine-tuning learning rate.
        finetune_num_train_epochs: Fine-tuning epochs.
        finetune_max_train_steps: Stop fine-tuning after this many steps (smoke tests); empty: all epochs.
        registered_model_prefix: MLflow names are `<prefix>-<preset>` and `<prefix>-<task_name>`.
        min_improvement: A new model becomes champion only when it beats the champion by more than this.
        seed: Random seed of every stage: ingest's validation split, the examples, pretraining, fine-tuning.
    """
    started = time.perf_counter()
    work = default_work_dir(work_dir)
    task = get_task(task_name, task_file)
    kind = task.model_kind
    task_train_file, task_validation_file = task.files(task_train_file, task_validation_file)
    flow_run_id = str(flow_run.get_id())
    # One parent MLflow run per pipeline run; every stage's run nests under it.
    with parent_run("bert-pipeline", "pipeline") as run_id:
        # The fine-tuning task's dev set is always kept out of the pretraining corpus.
        decontaminate = [*task.decontamination_specs(task_validation_file, text_column), *(decontamination_files or [])]
        documents_dir = ingest_flow(sources=sources, work_dir=str(work), validation_fraction=validation_fraction,
                                    decontamination_files=decontaminate, seed=seed, n_workers=data_workers,
                                    dask_address=dask_address)
        corpus = stage.read_json(Path(documents_dir) / "manifest.json")
        log_stage_run(run_id, "ingest", documents_dir, metrics=manifest_metrics(corpus),
                      artifacts=[str(Path(documents_dir) / "manifest.json")])
        examples_dir = examples_flow(documents_dir=documents_dir, work_dir=str(work), vocab_size=vocab_size,
                                     max_seq_length=max_seq_length, dupe_factor=dupe_factor,
                                     pair_objective=pair_objective, masking=masking, mlm_probability=mlm_probability,
                                     whole_word_mask=whole_word_mask, seed=seed,
                                     n_workers=data_workers, dask_address=dask_address)
        examples = {s: stage.read_json(Path(examples_dir) / s / "manifest.json") for s in ("train", "validation")}
        log_stage_run(run_id, "examples", examples_dir,
                      metrics={f"{s}_{k}": v for s, m in examples.items() for k, v in manifest_metrics(m).items()},
                      artifacts=[str(Path(examples_dir) / s / "manifest.json") for s in ("train", "validation")])
        pretrained = pretrain_flow(
            shards_dir=examples_dir, work_dir=str(work), preset=preset,
            per_device_train_batch_size=per_device_train_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=learning_rate,
            num_warmup_steps=num_warmup_steps, max_train_steps=max_train_steps, mixed_precision=mixed_precision,
            eval_steps=eval_steps, checkpointing_steps=checkpointing_steps, num_processes=num_processes, seed=seed,
            mlflow_parent_run_id=run_id,
        )
        pretrain_dir = Path(pretrained["final_dir"]).parent
        if pretrained.get("reused"):  # up to date from an earlier pipeline run: point at the run that trained it
            log_stage_run(run_id, f"pretrain-{preset}", str(pretrain_dir), metrics=manifest_metrics(pretrained),
                          tags={"bertflow.reused_run_id": pretrained.get("mlflow_run_id") or ""})
        finetuned = finetune_flow(
            model_name_or_path=pretrained["final_dir"], task_name=task_name, task_file=task_file,
            train_file=task_train_file,
            validation_file=task_validation_file, work_dir=str(work), text_column=text_column,
            label_column=label_column,
            max_seq_length=max_seq_length if kind != "question-answering" else None,
            learning_rate=finetune_learning_rate, num_train_epochs=finetune_num_train_epochs,
            max_train_steps=finetune_max_train_steps, mixed_precision=mixed_precision, seed=seed,
        )
        task_model_name = f"{registered_model_prefix}-{task_name}"
        evaluation = evaluate_flow(
            pretrained_dir=pretrained["final_dir"], validation_shards_dir=str(Path(examples_dir) / "validation"),
            report_dir=str(work / "reports"), pretrain_metrics_file=str(pretrain_dir / "metrics.jsonl"),
            classifier_dir=finetuned["final_dir"], classifier_data_file=task_validation_file,
            champion_model_uri=f"models:/{task_model_name}@champion",
        )
        pretrained_metrics = {**evaluation["pretrained"], "initial_eval_mlm_loss": pretrained["initial_eval_mlm_loss"]}
        pretrained_metrics = {("eval_" + k if not k.startswith(("eval_", "initial_")) else k): v
                              for k, v in pretrained_metrics.items()}
        classifier_metrics = {f"eval_{k}": v for k, v in scalar_metrics(evaluation["classifier"]).items()}
        champion_metrics = ({f"eval_{k}": v for k, v in scalar_metrics(evaluation["champion"]).items()}
                            if evaluation["champion"] else None)
        log_stage_run(run_id, "evaluate", metrics={**pretrained_metrics, **classifier_metrics,
                                                   **{f"champion_{k}": v for k, v in (champion_metrics or {}).items()}},
                      artifacts=[*evaluation["pretrained_reports"], *evaluation["classifier_reports"]],
                      tags={"bertflow.champion_version": evaluation["champion_version"] or "none"})
        registered = register_flow(
            pretrained_dir=pretrained["final_dir"], preset=preset, pretrained_metrics=pretrained_metrics,
            classifier_dir=finetuned["final_dir"], task_name=task_name, classifier_metrics=classifier_metrics,
            primary_metric=task.primary_metric, champion_metrics=champion_metrics,
            champion_version=evaluation["champion_version"],
            lineage=lineage_tags(documents_dir=documents_dir, examples_dir=examples_dir, pretrain_dir=pretrain_dir),
            classifier_tags={"bertflow.task_train_file": task_train_file,
                             "bertflow.task_validation_file": task_validation_file},
            params={"pretrain": stage.read_json(pretrain_dir / stage.STAGE_RECORD)["config"],
                    "finetune": stage.read_json(Path(finetuned["final_dir"]).parent / stage.STAGE_RECORD)["config"]},
            pretrain_metrics_file=str(pretrain_dir / "metrics.jsonl"),
            finetune_metrics_file=str(Path(finetuned["final_dir"]).parent / "metrics.jsonl"),
            pretrained_artifacts=[*evaluation["pretrained_reports"],
                                  str(Path(examples_dir) / "train" / "manifest.json"),
                                  str(Path(documents_dir) / "manifest.json")],
            classifier_artifacts=evaluation["classifier_reports"],
            registered_model_prefix=registered_model_prefix, min_improvement=min_improvement,
            pretrain_run_id=pretrained.get("mlflow_run_id"), parent_run_id=run_id,
        )
        summary = {
            "work_dir": str(work),
            "flow_run_id": flow_run_id,
            "mlflow_run_id": run_id,
            "tracking_uri": redact(configure_tracking()),
            "corpus": corpus,
            "examples": examples,
            "pretrained": pretrained_metrics,
            "task": {"name": task_name, "kind": kind, "primary_metric": task.primary_metric},
            "classifier": classifier_metrics,
            "comparison": evaluation["comparison"],
            "registered": registered,
        }
    summary["seconds"] = round(time.perf_counter() - started, 1)
    registered = summary["registered"]
    finish_run(run_id, metrics={**summary["classifier"], **summary["pretrained"]},
               tags={f"bertflow.registered.{info['name']}": info["version"]
                     for info in (registered["pretrained"], registered["classifier"]) if info})
    summary["mlflow_links"] = _links(summary)
    create_markdown_artifact(key="pipeline-summary", markdown=render_summary(summary, markdown=True),
                             description="bert-pipeline summary")
    create_table_artifact(key="pipeline-models", table=_models_table(summary),
                          description="Models this run registered, their aliases and the promotion decision")
    return summary


def _links(summary: dict) -> dict[str, str]:
    registered = summary["registered"]
    links = {"pipeline_run": ui_links(summary["mlflow_run_id"])["run"]}
    for info in (registered["pretrained"], registered["classifier"]):
        if info:
            links[info["name"]] = ui_links(model=(info["name"], info["version"]))["model_version"]
    return links


def _models_table(summary: dict) -> list[dict]:
    rows = []
    for role, info in (("pretrained", summary["registered"]["pretrained"]),
                       ("task", summary["registered"]["classifier"])):
        if not info:
            continue
        metrics = summary["pretrained"] if role == "pretrained" else summary["classifier"]
        metric = "eval_mlm_loss" if role == "pretrained" else summary["task"]["primary_metric"]
        rows.append({"model": info["name"], "version": info["version"], "aliases": ", ".join(info["aliases"]),
                     "metric": metric, "value": round(float(metrics.get(metric, float("nan"))), 4),
                     "promoted": info["promoted"], "reason": info["reason"]})
    return rows


def render_summary(summary: dict, *, markdown: bool = False) -> str:
    corpus, train, validation = summary["corpus"], summary["examples"]["train"], summary["examples"]["validation"]
    pre, reg = summary["pretrained"], summary["registered"]
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(corpus["documents_rejected"].items())) or "none"
    quality = train["quality"]
    models = [reg["pretrained"]] + ([reg["classifier"]] if reg.get("classifier") else [])
    uri = summary["tracking_uri"]
    kind = summary.get("task", {}).get("kind", "classifier")
    clf_name = reg["classifier"]["name"] if reg.get("classifier") else reg["pretrained"]["name"]
    lines = [
        f"bert-pipeline finished in {summary['seconds']:.0f} s; outputs under {summary['work_dir']}",
        f"corpus:     {corpus['documents_read']} documents read, {corpus['documents_kept']} kept "
        f"(rejected: {rejected}); {corpus['sentences']:,} sentences",
        f"examples:   train {train['num_examples']:,} ({train['num_tokens']:,} tokens, {train['num_shards']} shards), "
        f"validation {validation['num_examples']:,}; "
        f"{'SOP swapped' if train.get('config', {}).get('pair_objective') == 'sop' else 'NSP random-next'} "
        f"{quality['nsp_random_next_share']:.1%}, "
        f"masked {quality.get('masked_share_of_maskable', float('nan')):.1%} of maskable tokens",
        f"pretrained: held-out MLM loss {pre['initial_eval_mlm_loss']:.3f} -> {pre['eval_mlm_loss']:.3f} "
        f"(MLM accuracy {pre['eval_mlm_accuracy']:.1%}, NSP accuracy {pre['eval_nsp_accuracy']:.1%})",
        _task_line(summary),
    ]
    comparison = summary.get("comparison")
    if comparison:
        lines.append(f"vs champion: {comparison['primary_metric']} {comparison['candidate']:.4f} vs "
                     f"{comparison['champion']:.4f} on the same dev set; right only by the new model "
                     f"{comparison['candidate_only_correct']}, only by the champion {comparison['champion_only_correct']} "
                     f"(McNemar p {comparison['mcnemar_p_value']:.2g})")
    for info in models:
        lines.append(f"registered: {info['name']} v{info['version']} aliases {info['aliases']} ({info['reason']})")
    links = summary.get("mlflow_links") or {}
    if uri.startswith(("http://", "https://")):
        lines.append(f"MLflow UI:  {links.get('pipeline_run', uri)}")
    else:
        lines.append(f"MLflow UI:  mlflow ui --backend-store-uri {uri} --port 5000   then open "
                     f"{links.get('pipeline_run', 'http://127.0.0.1:5000')}")
    lines += [
        f"Prefect UI: prefect server start   then open http://127.0.0.1:4200/runs/flow-run/{summary['flow_run_id']}",
        f"Predict:    MLFLOW_TRACKING_URI={uri} python -c \"import mlflow{_PREDICT_IMPORTS[kind]}; "
        f"print(mlflow.pyfunc.load_model('models:/{clf_name}@champion').predict({_PREDICT_INPUT[kind]}))\"",
    ]
    if not markdown:
        return "\n".join(lines)
    link_lines = [f"- [{'MLflow pipeline run' if k == 'pipeline_run' else k + ' (model version)'}]({v})"
                  for k, v in links.items()]
    return "```\n" + "\n".join(lines) + "\n```\n" + ("\n" + "\n".join(link_lines) + "\n" if link_lines else "")


_PREDICT_IMPORTS = {"classifier": "", "token-classifier": "", "question-answering": ", pandas as pd"}
_PREDICT_INPUT = {
    "classifier": "['a gorgeous, witty film']",
    "token-classifier": "['Alice Smith flew from Paris to Berlin .']",
    "question-answering": "pd.DataFrame({'question': ['Who ruled Normandy?'], "
                          "'context': ['Normandy was ruled by Rollo, a Viking leader.']})",
}


def _task_line(summary: dict) -> str:
    clf, kind = summary["classifier"], summary.get("task", {}).get("kind", "classifier")
    nan = float("nan")
    if kind == "question-answering":
        return f"qa model:   dev exact match {clf.get('eval_exact_match', nan):.1f}, F1 {clf.get('eval_f1', nan):.1f}"
    if kind == "token-classifier":
        return (f"ner model:  dev entity F1 {clf.get('eval_f1', nan):.3f} (precision {clf.get('eval_precision', nan):.3f}, "
                f"recall {clf.get('eval_recall', nan):.3f})")
    return f"classifier: dev accuracy {clf.get('eval_accuracy', nan):.1%}, F1 {clf.get('eval_f1', nan):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run bert-pipeline (defaults: the bundled sample).")
    parser.add_argument("--params", type=str, default=None, help="JSON object of flow parameters to override")
    parser.add_argument("--summary-json", type=Path, default=None, help="also write the summary as JSON here")
    args = parser.parse_args(argv)
    params = json.loads(args.params) if args.params else {}
    summary = bert_pipeline(**params)
    if args.summary_json:
        stage.write_json(args.summary_json, summary)
    print("\n" + render_summary(summary))
    print(f"data directory: {bertflow_home()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
