"""Flow `bert-pipeline`: ingest -> tokenizer + NSP/MLM shards -> pretrain -> downstream suite (pretrained vs its
random-init twin) -> fine-tune -> evaluate -> register.

`python -m flows.pipeline` runs it on the bundled sample with the sample profile (`flows.SAMPLE_PROFILE`: a
bert-tiny, 8k vocabulary, 500 pretraining steps: a few minutes on 2 CPU cores) and prints a summary. Each stage's
settings are one object per stage (`ingest`, `examples`, `pretrain`, `finetune`, `suite`) holding the fields of
that stage's config it changes (`flows/parameters.py`): their names, types and defaults live in the configs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from bert_core import stage
from bert_core.config import SEED, given
from bert_core.downstream.catalogue import get_task
from bert_core.registry.records import registered_name
from bert_core.registry.summary import pipeline_summary, render_summary
from bert_core.stage import bertflow_home, default_work_dir
from deployments import deployment_parameters
from flows.cluster import data_cluster
from flows.evaluate import evaluate_flow
from flows.examples import examples_flow
from flows.finetune import finetune_flow
from flows.ingest import ingest_flow
from flows.parameters import (SAMPLE_PROFILE, IngestParameters, SampleExamples, SampleFinetune, SamplePretrain,
    SuiteParameters)
from flows.pretrain import pretrain_flow
from flows.register import register_flow
from flows.suite import encoder_gate, suite_flow
from tasks.registry import finish_pipeline, log_stages, parent_run


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
        task_name: A catalogue task (sst2, imdb, mrpc, rte, conll2003, squad; sst2, mrpc and squad ship a sample), one
            of `task_file` or `$BERTFLOW_HOME/tasks/<name>.json|yaml`, else a sentence classification.
        task_file: A JSON/YAML file of task catalogue entries (bert_core.downstream.catalogue).
        task_train_file: Fine-tuning training file (TSV/CSV/JSON/JSONL/Parquet, CoNLL, SQuAD JSON).
        task_validation_file: Dev file: the fine-tuned model and the current champion are both scored on it; its
            texts are always kept out of the pretraining corpus.
        ingest: The IngestConfig fields this run changes, e.g. {"validation_fraction": 0.1, "cleaning":
            {"min_chars": 100}} (every stage object: `python -m bert_core <stage> --help` lists its fields).
        examples: The ExamplesConfig fields it changes, e.g. {"masking": "dynamic", "tokenizer": {"vocab_size":
            30522}}; the sample profile sets tokenizer.vocab_size 8192.
        pretrain: The PretrainConfig fields it changes, e.g. {"preset": "bert-mini"}; the sample profile sets
            learning_rate 1e-3, 500 steps, 50 warm-up, evaluation and checkpoints every 100.
        finetune: The FinetuneConfig fields it changes, e.g. {"num_train_epochs": 3}; the sample profile sets
            learning_rate 5e-4.
        suite: The SuiteConfig fields it changes, e.g. {"size": "tiny"}: the encoder and its random-init twin
            fine-tuned alike; its suite score is the encoder's promotion gate. "off": no suite; the gate is then
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
              (("ingest", ingest), ("examples", examples), ("pretrain", pretrain), ("finetune", finetune))}
    # The task's dev texts are always kept out of the pretraining corpus.
    stages["ingest"]["decontamination_files"] = [
        *task.decontamination_specs(validation_file, stages["finetune"].get("text_column")),
        *stages["ingest"].get("decontamination_files", [])]
    with parent_run("bert-pipeline", "pipeline") as run_id:  # every stage's MLflow run nests under this one
        with data_cluster(data_workers, dask_address) as (address, _):  # one Dask cluster for both data stages
            data = dict(work_dir=str(work), seed=seed, n_workers=data_workers, dask_address=address)
            documents_dir = ingest_flow(sources=sources, ingest=stages["ingest"], **data)
            examples_dir = examples_flow(documents_dir=documents_dir, examples=stages["examples"], **data)
        pretrained = pretrain_flow(shards_dir=examples_dir, work_dir=str(work), pretrain=stages["pretrain"], seed=seed,
                                   mlflow_parent_run_id=run_id)
        logged = log_stages(run_id, documents_dir, examples_dir, pretrained)  # nested runs: manifests, a reused encoder
        encoder_name = registered_name(registered_model_prefix, pretrained["final_dir"])
        suite_gate = None if suite == "off" else encoder_gate(
            suite_flow(encoder=pretrained["final_dir"], work_dir=str(work), suite=suite), encoder_name, suite, str(work))
        finetuned = finetune_flow(model_name_or_path=pretrained["final_dir"], task_name=task_name, task_file=task_file,
                                  train_file=train_file, validation_file=validation_file, work_dir=str(work),
                                  finetune=stages["finetune"], seed=seed)
        evaluation = evaluate_flow(pretrained["final_dir"], finetuned["final_dir"], str(work / "reports"),
                                   f"models:/{registered_model_prefix}-{task_name}@champion", suite_gate, run_id)
        encoder = register_flow(pretrained["final_dir"], evaluation["pretrained"], encoder_name, min_improvement,
                                run_id)
        model = register_flow(finetuned["final_dir"], evaluation["classifier"], f"{registered_model_prefix}-{task_name}",
                              min_improvement, run_id, encoder["model_uri"])
    summary = pipeline_summary(
        work_dir=str(work), flow_run_id=str(flow_run.get_id()), mlflow_run_id=run_id,
        stages=logged, evaluation=evaluation,
        task={"name": task_name, "kind": task.model_kind, "primary_metric": task.primary_metric,
              "pairs": bool(task.text_pair_column)},
        registered={"pretrained": encoder, "classifier": model}, suite_gate=suite_gate,
        seconds=round(time.perf_counter() - started, 1))
    finish_pipeline(summary)
    return summary


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
