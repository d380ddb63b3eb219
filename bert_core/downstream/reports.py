"""Evaluation reports as people read them: pretraining curves, confusion matrices, per-question-type bars, and the
markdown of a task evaluation beside the champion's figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from bert_core.metrics import scalar_metrics
from bert_core.stage import write_json

matplotlib.use("Agg")  # files only, no display: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402


@dataclass(frozen=True, kw_only=True)
class ReportPaths:
    json: Path
    plots: tuple[Path, ...]


def write_pretraining_report(metrics_jsonl: str | Path, output_dir: str | Path) -> ReportPaths:
    """Plot training and held-out loss curves from a pretraining metrics.jsonl; write the report JSON."""
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
    write_json(report, {"train": train, "held_out": held_out})
    return ReportPaths(json=report, plots=(plot,))


def write_confusion_matrix_plot(confusion: list[list[int]], label_names: list[str], path: str | Path, *,
                                title: str = "Confusion matrix (dev)") -> Path:
    matrix = np.asarray(confusion)
    size = max(4.0, 0.6 * len(label_names) + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45 if len(label_names) > 3 else 0)
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def bar_plot(values: dict[str, float], counts: dict[str, int], path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(values)
    ax.bar(names, [values[n] for n in names], color="#4c72b0")
    for i, n in enumerate(names):
        ax.text(i, values[n] + 1, f"n={counts[n]}", ha="center", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("F1 (%)")
    ax.set_title("Answer F1 by question word (dev)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def render_task_report(kind: str, data_file, metrics: dict[str, Any], champion: dict[str, Any] | None,
                       comparison: dict[str, Any] | None) -> str:
    """The evaluation as markdown: metrics table (with the champion's on the same data), per-type scores."""
    ours, theirs = scalar_metrics(metrics), scalar_metrics(champion or {})
    lines = [f"## {kind} on `{Path(data_file).name}`", ""]
    if champion is not None:
        lines += ["| metric | candidate | champion | difference |", "|---|---|---|---|"]
        lines += [f"| {k} | {v:.4f} | {theirs.get(k, float('nan')):.4f} | {v - theirs.get(k, float('nan')):+.4f} |"
                  for k, v in ours.items()]
    else:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in ours.items()]
    for key in ("per_type_f1", "f1_by_question_type"):
        if key in metrics:
            lines += ["", f"{key.replace('_', ' ')}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics[key].items())]
    if "confusion_matrix" in metrics:
        lines += ["", f"Confusion matrix (rows true, columns predicted; {metrics['label_names']}): "
                      f"`{metrics['confusion_matrix']}`"]
    if comparison is not None:
        lines += ["", f"Against the champion on the same {_count_of(metrics)} examples: the candidate alone is right on "
                      f"{comparison['candidate_only_correct']}, the champion alone on "
                      f"{comparison['champion_only_correct']} (exact McNemar p = {comparison['mcnemar_p_value']:.3g})."]
    else:
        lines += ["", "No champion to compare with."]
    return "\n".join(lines) + "\n"


def _count_of(metrics: dict[str, Any]) -> str:
    for key in ("num_examples", "num_sentences", "num_questions"):
        if key in metrics:
            return f"{metrics[key]:,}"
    return "same"
