"""Evaluation: held-out MLM/NSP metrics of pretrained models, task metrics of classifiers, reports and plots.

Pretrained models are scored on the validation shards, which always carry fixed (static) masks, so two models are
compared on exactly the same predictions. Classifiers are scored on a labelled dev file: accuracy, F1 of the
positive class (binary) or macro-F1, Matthews correlation and the confusion matrix.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_objective(objective, dataset, collator, *, batch_size: int, device, autocast=None) -> dict[str, float]:
    """MLM loss/accuracy/perplexity and NSP loss/accuracy of a `PretrainingObjective` over a static-masked split."""
    was_training = objective.training
    objective.eval()
    sums = dict.fromkeys(("mlm_loss", "nsp_loss", "mlm_correct", "mlm_count", "nsp_correct", "nsp_count"), 0.0)
    ctx = autocast if autocast is not None else contextlib.nullcontext
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        batch = {k: v.to(device) for k, v in collator(items).items()}
        with ctx():
            out = objective(**batch)
        mlm_count, nsp_count = int(out["mlm_count"]), int(out["nsp_count"])
        # Weight by predictions so the result is the mean over all masked tokens, not over batches.
        sums["mlm_loss"] += float(out["mlm_loss"]) * mlm_count
        sums["nsp_loss"] += float(out["nsp_loss"]) * nsp_count
        sums["mlm_correct"] += int(out["mlm_correct"])
        sums["nsp_correct"] += int(out["nsp_correct"])
        sums["mlm_count"] += mlm_count
        sums["nsp_count"] += nsp_count
    if was_training:
        objective.train()
    mlm_loss = sums["mlm_loss"] / max(1.0, sums["mlm_count"])
    return {
        "mlm_loss": mlm_loss,
        "mlm_perplexity": float(np.exp(min(mlm_loss, 50.0))),
        "mlm_accuracy": sums["mlm_correct"] / max(1.0, sums["mlm_count"]),
        "nsp_loss": sums["nsp_loss"] / max(1.0, sums["nsp_count"]),
        "nsp_accuracy": sums["nsp_correct"] / max(1.0, sums["nsp_count"]),
        "num_examples": float(len(dataset)),
    }


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """What `python -m bert_core evaluate --config` scores: a pretrained model and/or a classifier."""

    model_dir: str | None = None  # a BertForPreTraining save_pretrained directory...
    shards_dir: str | None = None  # ...scored on this static-masked split (e.g. <examples>/validation)
    classifier_dir: str | None = None  # a sequence classifier...
    data_file: str | None = None  # ...scored on this labelled file
    output_dir: str | None = None  # where classifier reports go
    text_column: str = "sentence"
    label_column: str = "label"
    max_seq_length: int = 128
    per_device_eval_batch_size: int = 64


def evaluate_models(config: EvaluateConfig) -> dict[str, Any]:
    """Run whichever evaluations the config names; return {"pretrained": ..., "classifier": ...}."""
    results: dict[str, Any] = {}
    if bool(config.model_dir) != bool(config.shards_dir):
        raise ValueError("evaluate: model_dir and shards_dir go together")
    if bool(config.classifier_dir) != bool(config.data_file):
        raise ValueError("evaluate: classifier_dir and data_file go together")
    if not config.model_dir and not config.classifier_dir:
        raise ValueError("evaluate: name a pretrained model (model_dir + shards_dir) or a classifier (classifier_dir + data_file)")
    if config.model_dir:
        results["pretrained"] = evaluate_pretrained(config.model_dir, config.shards_dir,
                                                    batch_size=config.per_device_eval_batch_size)
    if config.classifier_dir:
        output_dir = config.output_dir or str(Path(config.classifier_dir).parent / "evaluation")
        results["classifier"] = evaluate_classifier(config.classifier_dir, config.data_file, output_dir,
                                                    text_column=config.text_column, label_column=config.label_column,
                                                    max_seq_length=config.max_seq_length)
    return results


def evaluate_pretrained(model_dir: str | Path, shards_dir: str | Path, *, batch_size: int = 64) -> dict[str, float]:
    """Held-out MLM/NSP metrics of a saved BertForPreTraining on one split of static-masked shards."""
    from transformers import BertForPreTraining

    from bert_core.data import PretrainingCollator, ShardDataset
    from bert_core.model import PretrainingObjective

    dataset = ShardDataset(shards_dir)
    if not dataset.static_masks:
        raise ValueError(f"{shards_dir} holds unmasked examples; held-out evaluation needs static masks")
    model = BertForPreTraining.from_pretrained(model_dir)
    if model.config.vocab_size != dataset.manifest["vocab_size"]:
        raise ValueError(f"model vocab {model.config.vocab_size} != shard vocab {dataset.manifest['vocab_size']}")
    collator = PretrainingCollator(vocab_size=model.config.vocab_size)
    return evaluate_objective(PretrainingObjective(model), dataset, collator, batch_size=batch_size, device="cpu")


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


@dataclass(frozen=True, kw_only=True)
class ReportPaths:
    json: Path
    plots: tuple[Path, ...]


def write_pretraining_report(metrics_jsonl: str | Path, output_dir: str | Path) -> ReportPaths:
    """Plot training and held-out loss curves from a pretraining metrics.jsonl; write the report JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    held_out = [r for r in records if "eval_mlm_loss" in r]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot([r["step"] for r in train], [r["mlm_loss"] for r in train], label="train MLM loss")
    axes[0].plot([r["step"] for r in train], [r["nsp_loss"] for r in train], label="train NSP loss")
    axes[0].plot([r["step"] for r in held_out], [r["eval_mlm_loss"] for r in held_out], "o-", label="held-out MLM loss")
    axes[0].set_xlabel("optimizer step")
    axes[0].set_ylabel("cross-entropy")
    axes[0].set_title("Pretraining loss")
    axes[0].legend()
    axes[1].plot([r["step"] for r in train], [r["mlm_accuracy"] for r in train], label="train MLM accuracy")
    axes[1].plot([r["step"] for r in held_out], [r["eval_mlm_accuracy"] for r in held_out], "o-", label="held-out MLM accuracy")
    axes[1].plot([r["step"] for r in held_out], [r["eval_nsp_accuracy"] for r in held_out], "s-", label="held-out NSP accuracy")
    axes[1].set_xlabel("optimizer step")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("Pretraining accuracy")
    axes[1].legend()
    fig.tight_layout()
    plot = output_dir / "pretraining_curves.png"
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    report = output_dir / "pretraining_report.json"
    from bert_core.stage import write_json

    write_json(report, {"train": train, "held_out": held_out})
    return ReportPaths(json=report, plots=(plot,))


def write_confusion_matrix_plot(confusion: list[list[int]], label_names: list[str], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names)
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set_title("Confusion matrix (dev)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def evaluate_classifier(
    model_dir: str | Path,
    data_file: str | Path,
    output_dir: str | Path,
    *,
    text_column: str = "sentence",
    label_column: str = "label",
    max_seq_length: int = 128,
) -> dict[str, Any]:
    """Score a saved sequence classifier on a labelled file; write metrics JSON, predictions and a confusion plot."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bert_core.finetune import predict_labels, read_labelled_texts
    from bert_core.stage import write_json

    texts, labels = read_labelled_texts(data_file, text_column, label_column)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    predictions, probabilities = predict_labels(model, tokenizer, texts, max_seq_length=max_seq_length)
    label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    metrics = classification_metrics(labels, predictions, model.config.num_labels)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "classifier_metrics.json", {**metrics, "label_names": label_names, "data_file": str(data_file)})
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for text, label, pred, probs in zip(texts, labels, predictions, probabilities):
            f.write(json.dumps({"text": text, "label": int(label), "prediction": int(pred),
                                "probabilities": [round(float(p), 6) for p in probs]}) + "\n")
    write_confusion_matrix_plot(metrics["confusion_matrix"], label_names, output_dir / "confusion_matrix.png")
    return metrics
