"""Flow `downstream-suite`: is an encoder worth its pretraining? Fine-tune catalogue tasks from it and from its
random-init twin under one protocol and report the differences (see `bert_core.downstream.suite`).

`encoder_gate` is what `bert-pipeline` does with a suite report: the same suite on the current champion encoder
(its runs cached like any suite's), and the figures the encoder's promotion gate compares."""

from __future__ import annotations

import re
from pathlib import Path
from mlflow.tracking import MlflowClient
from prefect import flow

from bert_core import stage
from bert_core.config import given
from bert_core.downstream import suite as suites
from bert_core.downstream.suite import SuiteConfig
from bert_core.registry.registration import CHAMPION, alias_version
from bert_core.stage import default_work_dir
from bert_core.training.model import model_hash
from flows.parameters import SuiteParameters
from tasks.suite import run_suite


def _label(encoder: str) -> str:
    """A directory name for an encoder's suite runs: its run directory's name, or the models:/ URI spelled out."""
    if encoder.startswith("models:/"):
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", encoder.removeprefix("models:/"))
    path = Path(encoder)
    return path.parent.name if path.name == "final" else path.name


@flow(name="downstream-suite")
def suite_flow(encoder: str, work_dir: str | None = None, suite: SuiteParameters | None = None) -> dict:
    """Returns the suite report (per task: both arms' mean +- std, the difference, a paired p-value).

    Args:
        encoder: A pretrained encoder: a `final/` directory or `models:/<name>@champion`.
        work_dir: Where the runs go (`<work_dir>/suite/<encoder>`); empty: `$BERTFLOW_HOME/work`. The twin's runs
            are cached under `$BERTFLOW_HOME/suite-twins`.
        suite: The fields of `SuiteConfig` this run changes, e.g. {"size": "tiny"} or {"size": "full", "data_dir":
            "../shared/data/tasks"}.
    """
    config = stage.config_from_dict(SuiteConfig, {
        **given(suite), "encoder": encoder, "output_dir": str(default_work_dir(work_dir) / "suite" / _label(encoder))})
    return run_suite(config)


def encoder_gate(report: dict, registered_name: str, suite_parameters, work_dir: str) -> dict:
    """What the encoder's promotion gate takes from its suite: its suite figures, the champion's on the same suite
    (run now, or found in the cache) and the paired p-value of the two (`champion_version` None when there is no
    champion), and the report's files, logged with the version."""
    version = alias_version(f"models:/{registered_name}@{CHAMPION}")
    out = Path(report["output_dir"])
    gate = {"report": report, "metrics": suites.report_metrics(report), "champion_metrics": None,
            "champion_version": version, "evidence": {}, "comparison": None,
            "files": [str(out / name) for name in ("report.json", "report.md", "report.png")]}
    if version is not None:
        if MlflowClient().get_model_version(registered_name, version).tags.get("bertflow.model_hash") == \
                model_hash(report["encoder"]):
            champion = report  # the champion is this encoder (a rerun): its suite is this one
        else:
            champion = suite_flow(encoder=f"models:/{registered_name}/{version}", work_dir=work_dir,
                                  suite=given(suite_parameters))
        comparison = suites.compare(report, champion)
        gate.update(champion_metrics=suites.report_metrics(champion), comparison=comparison,
                    evidence={"suite_paired_p_value": comparison["paired_p_value"]})
    return gate
