"""Prefect task for fine-tuning any task kind: the kind's training function (`bert_core.downstream.kinds`)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from bert_core.downstream.finetune import finetune_task as finetune_task_lib
from bert_core.downstream.kinds import kind_of_config
from tasks import TRAINING_TAG


@task(name="finetune_task", cache_policy=NO_CACHE, tags=[TRAINING_TAG])
def finetune_task(config) -> dict:
    """`bert_core.downstream.finetune.finetune_task`: the config's kind trains (classification, NER, QA, ...)."""
    summary = finetune_task_lib(config)
    kind = kind_of_config(config)
    get_run_logger().info("finetune (%s task): %s after %d steps", kind.name, kind.model.summary_line(summary),
                          summary["steps"])
    return summary
