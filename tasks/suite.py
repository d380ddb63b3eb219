"""Prefect task for the downstream suite: `bert_core.downstream.suite.run_suite`, its report as Prefect artifacts."""

from __future__ import annotations

import math

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bert_core.downstream import suite
from tasks import TRAINING_TAG


@task(name="downstream_suite", cache_policy=NO_CACHE, tags=[TRAINING_TAG])
def run_suite(config: suite.SuiteConfig) -> dict:
    """Fine-tune the suite's tasks from the encoder and from its random-init twin; publish the comparison."""
    report = suite.run_suite(config)
    get_run_logger().info(suite.summary_line(report))
    create_table_artifact(key="suite", description="Pretrained encoder vs its random-init twin, same fine-tuning",
                          table=[{"task": r["task"], "metric": r["metric"],
                                  "majority class": round(r["majority_baseline"], 4),
                                  "pretrained": f"{r['pretrained_mean']:.4f} +- {r['pretrained_std']:.4f}",
                                  "random init": f"{r['twin_mean']:.4f} +- {r['twin_std']:.4f}",
                                  "difference": round(r["delta"], 4),
                                  "paired p": None if math.isnan(r["paired_p_value"]) else round(r["paired_p_value"], 4)}
                                 for r in report["tasks"]])
    create_markdown_artifact(key="suite-report", markdown=suite.render_report(report),
                             description="Downstream suite report")
    return report
