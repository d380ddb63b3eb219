"""Flow `downstream-suite`: is an encoder worth its pretraining? Fine-tune catalogue tasks from it and from its
random-init twin under one protocol and report the differences (see `bert_core.downstream.suite`).

`encoder_gate` is what `bert-pipeline` does with a suite report: the same suite on the current champion encoder
(its runs cached like any suite's), and the figures the encoder's promotion gate compares."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from mlflow.tracking import MlflowClient
from prefect import flow

from bert_core.downstream import suite
from bert_core.downstream.suite import SIZES, SuiteConfig
from bert_core.registry.registration import CHAMPION, alias_version
from bert_core.stage import default_work_dir
from bert_core.training.model import model_hash
from flows.parameters import stage_parameters
from tasks.suite import run_suite


def _label(encoder: str) -> str:
    """A directory name for an encoder's suite runs: its run directory's name, or the models:/ URI spelled out."""
    if encoder.startswith("models:/"):
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", encoder.removeprefix("models:/"))
    path = Path(encoder)
    return path.parent.name if path.name == "final" else path.name


@flow(name="downstream-suite")
def suite_flow(
    encoder: str,
    work_dir: str | None = None,
    size: Literal[tuple(SIZES)] = SuiteConfig.size,
    tasks: list[str] | None = None,
    task_file: str | None = None,
    seeds: list[int] | None = None,
    learning_rates: list[float] | None = None,
    data_dir: str | None = SuiteConfig.data_dir,
) -> dict:
    """Returns the suite report (per task: both arms' mean +- std, the difference, a paired p-value).

    Args:
        encoder: A pretrained encoder: a `final/` directory or `models:/<name>@champion`.
        work_dir: Where the runs go (`<work_dir>/suite/<encoder>`); empty: `$BERTFLOW_HOME/work`. The twin's runs
            are cached under `$BERTFLOW_HOME/suite-twins`.
        size: tiny (SST-2, 2 seeds, one learning rate, 20 steps: about a minute), default (SST-2 and MRPC samples,
            plus CoNLL-2003 NER when `data_dir` holds it; seeds 0-2, learning rates 1e-4 / 3e-4 / 1e-3, 3 epochs
            with early stopping) or full (the same on the full train sets in `data_dir`).
        tasks: Catalogue task names instead of the size's (sentence, pair and token classification).
        task_file: A JSON/YAML catalogue file defining tasks of your own.
        seeds: Fine-tuning seeds instead of the size's.
        learning_rates: The learning-rate grid instead of the size's (each arm keeps its best).
        data_dir: A folder laid out like ../shared/data/tasks (sst2/train.tsv, mrpc/dev.tsv, conll2003/valid.txt).
    """
    config = SuiteConfig(encoder=encoder, output_dir=str(default_work_dir(work_dir) / "suite" / _label(encoder)),
                         size=size, tasks=tuple(tasks) if tasks else None, task_file=task_file,
                         seeds=tuple(seeds) if seeds else None,
                         learning_rates=tuple(learning_rates) if learning_rates else None, data_dir=data_dir)
    return run_suite(config)


# The suite flow's parameters but the encoder and where it writes: what a pipeline's `suite` object may set.
SuiteParameters = stage_parameters(suite_flow, "SuiteParameters", inputs=("encoder", "work_dir"))


def encoder_gate(report: dict, registered_name: str, suite_parameters: dict, work_dir: str) -> dict:
    """What the encoder's promotion gate compares: its suite figures, the champion's on the same suite (run now,
    or found in the cache) and the paired p-value of the two; `champion_version` None when there is no champion."""
    version = alias_version(f"models:/{registered_name}@{CHAMPION}")
    gate = {"metrics": suite.report_metrics(report), "champion_metrics": None, "champion_version": version,
            "evidence": {}}
    if version is not None:
        if MlflowClient().get_model_version(registered_name, version).tags.get("bertflow.model_hash") == \
                model_hash(report["encoder"]):
            champion = report  # the champion is this encoder (a rerun): its suite is this one
        else:
            champion = suite_flow(encoder=f"models:/{registered_name}/{version}", work_dir=work_dir,
                                  **suite_parameters)
        comparison = suite.compare(report, champion)
        gate.update(champion_metrics=suite.report_metrics(champion), comparison=comparison,
                    evidence={"suite_paired_p_value": comparison["paired_p_value"]})
    return gate
