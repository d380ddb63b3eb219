"""Prefect deployment definitions (prefect.yaml): schedules, work pools and per-environment parameters live here."""

from pathlib import Path

PREFECT_YAML = Path(__file__).resolve().parent / "prefect.yaml"
