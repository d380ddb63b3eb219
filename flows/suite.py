"""Flow `downstream-suite`: is an encoder worth its pretraining? Fine-tune catalogue tasks from it and from its
random-init twin under one protocol and report the differences (see `bert_core.suite`)."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from bert_core.suite import SIZES, SuiteConfig
from flows import default_work_dir
from tasks.suite import run_suite


@flow(name="downstream-suite")
def suite_flow(
    encoder: str,
    work_dir: str | None = None,
    size: Literal[tuple(SIZES)] = SuiteConfig.size,
    tasks: list[str] | None = None,
    task_file: str | None = None,
    seeds: list[int] | None = None,
    learning_rates: list[float] | None = None,
) -> dict:
    """Returns the suite report (per task: both arms' mean +- std, the difference, a paired p-value).

    Args:
        encoder: A pretrained encoder: a `final/` directory or `models:/<name>@champion`.
        work_dir: Where the runs go (`<work_dir>/suite`); empty: `$BERTFLOW_HOME/work`. The twin's runs are cached
            under `$BERTFLOW_HOME/suite-twins`.
        size: tiny (SST-2, 2 seeds, one learning rate, 20 steps: about a minute) or default (SST-2 and MRPC, seeds
            0-2, learning rates 1e-4 / 3e-4 / 1e-3, 3 epochs with early stopping).
        tasks: Catalogue task names instead of the size's (sentence and pair classification).
        task_file: A JSON/YAML catalogue file defining tasks of your own.
        seeds: Fine-tuning seeds instead of the size's.
        learning_rates: The learning-rate grid instead of the size's (each arm keeps its best).
    """
    config = SuiteConfig(encoder=encoder, output_dir=str(default_work_dir(work_dir) / "suite"), size=size,
                         tasks=tuple(tasks) if tasks else None, task_file=task_file,
                         seeds=tuple(seeds) if seeds else None,
                         learning_rates=tuple(learning_rates) if learning_rates else None)
    return run_suite(config)
