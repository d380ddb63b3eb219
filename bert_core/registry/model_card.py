"""The model card of a registered version: what the model is, what it was trained on, how it scored (the promotion
metric and its margin), its lineage, and how to load it. Stored as the version's MLflow description, and, with the
Hugging Face Hub's metadata block in front (`hub_card`), as README.md in the model directory, so that
`push_to_hub` publishes a complete card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from bert_core.downstream.catalogue import get_task
from bert_core.downstream.kinds import model_kind
from bert_core.downstream.suite import suite_metric
from bert_core.metrics import scalar_metrics
from bert_core.registry.signatures import example_source


def model_card(config: Any, model_hash: str) -> str:
    """A markdown model card for a version (`config`: its RegisterConfig, kind already resolved)."""
    kind = model_kind(config.kind).description
    tags = config.tags
    lines = [f"# {config.registered_model_name}", "", f"A {kind} trained by bertflow."]
    if tags.get("bertflow.parent_model"):
        lines.append(f"Fine-tuned from `{tags['bertflow.parent_model']}`.")
    lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(scalar_metrics(config.metrics).items())]
    lines += ["", f"Promotion metric: `{config.primary_metric}` ({'higher' if config.greater_is_better else 'lower'} "
              f"is better, margin {config.min_improvement})."]
    data = {k.removeprefix("bertflow."): v for k, v in tags.items()
            if k in ("bertflow.corpus_sources", "bertflow.task_train_file", "bertflow.task_validation_file")}
    if data:
        lines += ["", "## Data", ""] + [f"- {k}: `{v}`" for k, v in data.items()]
    lineage = {k: v for k, v in tags.items() if k.endswith(("sha256", "stage_key", "git_commit", "flow_run_id"))}
    lines += ["", "## Lineage", "", f"- model files sha256: `{model_hash}`"]
    lines += [f"- {k}: `{v}`" for k, v in sorted(lineage.items())]
    example = f"model.predict({example_source(config.kind, config.text_pair)})"
    example += model_kind(config.kind).use_note
    lines += ["", "## Use", "", "```python", "import mlflow", "import pandas as pd",
              f"model = mlflow.pyfunc.load_model('models:/{config.registered_model_name}@champion')", example, "```",
              "", "Weights are stored as safetensors; the pyfunc wrapper is code, not a pickle."]
    return "\n".join(lines) + "\n"


def _eval_result(task, metric: str, value: float, name: str | None = None, task_type: str | None = None):
    dataset, _, dataset_config = (task.hub_dataset or task.name).partition(":")
    return EvalResult(task_type=task_type or task.task_kind.model.pipeline_tag, dataset_type=dataset, dataset_name=task.name,
                      dataset_config=dataset_config or None, dataset_split="validation",
                      metric_type=metric.removeprefix("eval_"), metric_value=float(value), metric_name=name)


def hub_card(config: Any, model_hash: str) -> str:
    """`model_card` behind the Hub's metadata block: language, license, the datasets it was trained on (the task's,
    and the corpus' `hf:` sources), pipeline tag and the evaluation results (the task's dev metrics; for an encoder,
    its downstream suite: the pretrained arm's mean over seeds, with the random-init twin's beside it)."""
    metrics, results, datasets = scalar_metrics(config.metrics), [], []
    model_config = Path(config.model_dir) / "config.json"
    architecture = json.loads(model_config.read_text()).get("model_type") if model_config.is_file() else None
    if model_kind(config.kind).suite_results:
        for key, value in sorted(metrics.items()):
            if key.startswith("suite_") and key.endswith("_pretrained_mean"):
                task = get_task(key[len("suite_"):-len("_pretrained_mean")])
                metric, twin = suite_metric(task), metrics.get(key.replace("_pretrained_mean", "_twin_mean"))
                name = f"{metric.removeprefix('eval_')} fine-tuned, mean over seeds" + (
                    f" (random init: {twin:.4f})" if twin is not None else "")
                results.append(_eval_result(task, metric, value, name))
    elif config.task:
        task = get_task(config.task)
        results = [_eval_result(task, key, value, task_type=model_kind(config.kind).pipeline_tag)
                   for key, value in sorted(metrics.items()) if key.startswith("eval_") and key != "eval_loss"]
        datasets.append(task.hub_dataset)
    sources = json.loads(config.tags.get("bertflow.corpus_sources", "[]") or "[]")
    datasets += [s[len("hf:"):] for s in sources if isinstance(s, str) and s.startswith("hf:")]
    data = ModelCardData(
        language="en", license=config.license, library_name="transformers", pipeline_tag=model_kind(config.kind).pipeline_tag,
        tags=["bertflow", *([architecture] if architecture else [])],
        datasets=sorted({d.split(":")[0] for d in datasets if d}) or None,
        metrics=sorted({r.metric_type for r in results}) or None,
        model_name=config.registered_model_name, eval_results=results or None)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{model_card(config, model_hash)}"))
