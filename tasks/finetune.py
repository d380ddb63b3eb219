"""Prefect tasks for fine-tuning: sequence classification, NER and extractive QA."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from bert_core.downstream import finetune as finetune_lib
from bert_core.downstream import ner as ner_lib
from bert_core.downstream import qa as qa_lib
from tasks import TRAINING_TAG


@task(name="finetune", cache_policy=NO_CACHE, tags=[TRAINING_TAG])
def finetune(config: finetune_lib.FinetuneConfig) -> dict:
    logger = get_run_logger()
    summary = finetune_lib.finetune(config)
    logger.info("finetune: dev accuracy %.4f, F1 %.4f after %d steps", summary["eval_accuracy"], summary["eval_f1"],
                summary["steps"])
    return summary


@task(name="finetune_ner", cache_policy=NO_CACHE, tags=[TRAINING_TAG])
def finetune_ner(config: ner_lib.NerConfig) -> dict:
    summary = ner_lib.finetune_ner(config)
    get_run_logger().info("finetune_ner: dev entity F1 %.4f (precision %.4f, recall %.4f) after %d steps",
                          summary["eval_f1"], summary["eval_precision"], summary["eval_recall"], summary["steps"])
    return summary


@task(name="finetune_qa", cache_policy=NO_CACHE, tags=[TRAINING_TAG])
def finetune_qa(config: qa_lib.QaConfig) -> dict:
    summary = qa_lib.finetune_qa(config)
    get_run_logger().info("finetune_qa: dev exact match %.2f, F1 %.2f after %d steps (%s)", summary["eval_exact_match"],
                          summary["eval_f1"], summary["steps"], summary["train"])
    return summary
