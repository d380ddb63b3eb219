"""Flow `register`: register a trained model in MLflow behind its promotion gate.

The model's directory and its run's records say what it is (kind, task, files, config, lineage, metric history;
`bert_core.registry.records`); the caller gives the gate's figures, measured now next to the champion's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from bert_core.registry.records import Gate, register_config
from tasks.registry import register_model


@flow(name="register")
def register_flow(
    model_dir: str,
    gate: Gate,
    registered_model_name: str,
    min_improvement: Annotated[float, Field(ge=0.0)] = 0.0,
    parent_run_id: str | None = None,
    parent_model: str | None = None,
) -> dict:
    """Returns the registered version's info (name, version, aliases, promoted, reason, model_uri, run_id).

    Args:
        model_dir: A training run's `final/` directory (pretraining or fine-tuning).
        gate: What the promotion gate compares: the model's figures and the champion's on the same data.
        registered_model_name: The MLflow name (`bert_core.registry.records.registered_name`).
        min_improvement: The model becomes champion only when it beats the champion by more than this.
        parent_run_id: The MLflow run the registration run nests under (the pipeline's).
        parent_model: The model it came from, as a tag; empty: its description's base model.
    """
    config = register_config(model_dir, gate, registered_model_name, min_improvement=min_improvement,
                             parent_run_id=parent_run_id, parent_model=parent_model)
    run = str(flow_run.get_parent_flow_run_id() or flow_run.get_id())
    return register_model(replace(config, tags={**config.tags, "prefect.flow_run_id": run}))
