"""Flow `rollback-champion`: move a registered model's `champion` alias back to a named version, from the Prefect UI.

The same as `python -m bert_core rollback`, for operators who work in the UI; the decision is recorded on the
version (tag `bertflow.rollback`) and in the run's markdown artifact.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from bert_core import tracking
from bert_core.registry import registration


@task(name="rollback", cache_policy=NO_CACHE)
def rollback(name: str, version: str, reason: str) -> dict:
    result = registration.rollback(name, version, reason=reason)
    get_run_logger().info("%s: champion v%s -> v%s (%s)", name, result["previous_champion"], version, reason or "-")
    return result


@flow(name="rollback-champion")
def rollback_champion(
    registered_model_name: Annotated[str, Field(min_length=1)],
    version: Annotated[str, Field(pattern=r"^[0-9]+$")],
    reason: str = "",
) -> dict:
    """Make an earlier version the champion again.

    Args:
        registered_model_name: The MLflow registered model, e.g. bertflow-sst2.
        version: The version number that becomes champion again.
        reason: Why (recorded on the version and in this run's summary).
    """
    result = rollback(registered_model_name, version, reason)
    link = tracking.ui_links(model=(registered_model_name, version))["model_version"]
    create_markdown_artifact(key="rollback-summary", description="champion rollback",
                             markdown=(f"**{registered_model_name}**: champion v{result['previous_champion']} -> "
                                       f"[v{version}]({link}). Reason: {reason or 'none given'}.\n"))
    return result
