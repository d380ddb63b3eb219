"""Metrics: classification figures from labels and predictions (accuracy, F1, macro F1, Matthews correlation,
confusion), and `scalar_metrics`, the one filter from a result dict to the numbers MLflow and reports take.

Their own module because both training (best-model selection in `finetune.fit`) and evaluation use them, and the
evaluation side imports the fine-tuning readers: kept in either, the two would import each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> dict[str, Any]:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    f1s = []
    for c in range(num_labels):
        tp = confusion[c, c]
        precision = tp / max(1, confusion[:, c].sum())
        recall = tp / max(1, confusion[c, :].sum())
        f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    # Matthews correlation, multi-class form (Gorodkin 2004).
    t, p, n = confusion.sum(axis=1), confusion.sum(axis=0), confusion.sum()
    c = np.trace(confusion)
    denominator = np.sqrt(float(n * n - (p * p).sum())) * np.sqrt(float(n * n - (t * t).sum()))
    mcc = float((c * n - (t * p).sum()) / denominator) if denominator else 0.0
    return {
        "accuracy": float((labels == predictions).mean()) if labels.size else 0.0,
        "f1": float(f1s[1]) if num_labels == 2 else float(np.mean(f1s)),
        "macro_f1": float(np.mean(f1s)),
        "matthews_correlation": mcc,
        "confusion_matrix": confusion.tolist(),
        "num_examples": int(labels.size),
    }


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric values of `metrics` as floats: booleans, strings, lists and nested dicts left out."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def eval_metrics(metrics: dict[str, Any], *, numbers_only: bool = True) -> dict[str, Any]:
    """Evaluation results under the names that runs, gates and the catalogue's primary metrics use: `eval_<name>`
    (names that already start with `eval_` or `initial_` are kept); the numbers only (`scalar_metrics`) unless
    `numbers_only` is False (a summary keeps its confusion matrix). The one place the prefix is added."""
    values = scalar_metrics(metrics) if numbers_only else metrics
    return {(k if k.startswith(("eval_", "initial_")) else f"eval_{k}"): v for k, v in values.items()}
