"""Prefect task for MLflow registration (run, model version, aliases)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from bert_core import registry


@task(name="register_model", cache_policy=NO_CACHE)
def register_model(config: registry.RegisterConfig) -> dict:
    info = registry.register_model(config)
    get_run_logger().info("%s v%s aliases %s: %s", info["name"], info["version"], info["aliases"], info["reason"])
    return info
