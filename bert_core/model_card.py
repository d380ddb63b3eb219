"""The model card of a registered version: what the model is, what it was trained on, how it scored (the promotion
metric and its margin), its lineage, and how to load it. Stored as the version's MLflow description."""

from __future__ import annotations

from typing import Any

from bert_core.metrics import scalar_metrics


def model_card(config: Any, model_hash: str) -> str:
    """A markdown model card for a version (`config`: its RegisterConfig, kind already resolved)."""
    kind = {"classifier": "text classifier", "token-classifier": "token classifier (NER)",
            "question-answering": "extractive question answering model",
            "pretrained": "pretrained BERT encoder (MLM + NSP heads)"}[config.kind]
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
    example = {"classifier": "model.predict(['a gorgeous, witty film'])",
               "token-classifier": "model.predict(['Alice Smith flew from Paris to Berlin .'])",
               "question-answering": "model.predict(pd.DataFrame({'question': [...], 'context': [...]}))",
               "pretrained": "model.predict(['the [MASK] of the film'])  # params={'task': 'nsp'|'embed'}"}[config.kind]
    lines += ["", "## Use", "", "```python", "import mlflow",
              f"model = mlflow.pyfunc.load_model('models:/{config.registered_model_name}@champion')", example, "```",
              "", "Weights are stored as safetensors; the pyfunc wrapper is code, not a pickle."]
    return "\n".join(lines) + "\n"
