"""Prefect task for fine-tuning."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from bert_core import finetune as finetune_lib


@task(name="finetune", cache_policy=NO_CACHE)
def finetune(config: finetune_lib.FinetuneConfig) -> dict:
    logger = get_run_logger()
    summary = finetune_lib.finetune(config)
    logger.info("finetune: dev accuracy %.4f, F1 %.4f after %d steps", summary["eval_accuracy"], summary["eval_f1"],
                summary["steps"])
    return summary
