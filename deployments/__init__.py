"""Prefect deployment definitions (prefect.yaml): schedules, work pools and per-environment parameters live here."""

from pathlib import Path
from typing import Any

PREFECT_YAML = Path(__file__).resolve().parent / "prefect.yaml"


def deployment_parameters(name: str, entrypoint: str = "flows/pipeline.py:bert_pipeline") -> dict[str, Any]:
    """The parameters of prefect.yaml's deployment `name` (YAML anchors resolved), so that a named recipe runs
    the same without a Prefect server (`python -m flows.pipeline --deployment recipe-modernbert-mini`). Refused,
    with the names there are, when no deployment of that name runs `entrypoint`."""
    import yaml

    deployments = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    matching = [d for d in deployments if d["name"] == name and d["entrypoint"] == entrypoint]
    if not matching:
        names = sorted(d["name"] for d in deployments if d["entrypoint"] == entrypoint)
        raise ValueError(f"{PREFECT_YAML}: no deployment named {name!r} runs {entrypoint}; expected one of {names}")
    return dict(matching[0].get("parameters") or {})
