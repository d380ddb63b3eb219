"""Thin Prefect flows: the order of the stages and nothing else. One flow per stage, plus `pipeline.bert_pipeline`."""

import os
from pathlib import Path

# Let bert_core's own log lines reach the Prefect run logs (and the UI), not only the console.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bert_core")


def default_work_dir(work_dir: str | None) -> Path:
    """Stage outputs live under the project data directory unless a work_dir is given."""
    from bert_core.registry import bertflow_home

    return Path(work_dir) if work_dir else bertflow_home() / "work"
