"""The downstream suite: does this encoder beat the same model from random init, after the same fine-tuning?

For an encoder (a directory or models:/ URI) and a list of catalogue tasks, every task is fine-tuned from the
encoder and from its **random-init twin** (the same architecture and tokenizer, weights freshly initialised with
a fixed seed) under one protocol for both arms: each learning rate of the grid, each seed, the same epochs, early
stopping on the dev set. Per arm and task the learning rate with the best mean dev score is kept; the report gives
mean +- std over seeds, the difference, a paired t-test over seeds, and the suite score (the mean of the tasks'
metrics, `suite_metric`: MRPC's F1, SST-2's accuracy) of each arm.

The twin's runs are cached under `$BERTFLOW_HOME/suite-twins/<twin key>/`, keyed by the architecture, the tokenizer
and the init seed; the fine-tuning stage's own key (config, data, starting weights) decides whether a run is done, so
a second suite on another encoder of the same architecture and tokenizer reuses every twin run.
Tasks may be sentence or pair classification (SST-2, MRPC, RTE, IMDb) or token classification (CoNLL-2003 NER,
scored by entity F1). Sizes: `tiny` (tests, smoke runs), `default` (the bundled SST-2 and MRPC samples, plus
CoNLL-2003 when `data_dir` holds it), `full` (every task's full train and dev files from `data_dir`, a folder laid out
like ../shared/data/tasks).

`compare` sets two encoders' reports on the same suite side by side (the promotion gate: a candidate against the
champion), with a paired t-test over the per-seed suite scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
import torch
from scipy import stats
from transformers import AutoConfig, AutoTokenizer

from bert_core import stage
from bert_core.config import ConfigError, PositiveInt, SeqLength, check_fields
from bert_core.downstream.catalogue import get_task
from bert_core.downstream.finetune import TrainingConfig
from bert_core.downstream.kinds import TASK_KINDS, load
from bert_core.examples.tokenizer import tokenizer_hash
from bert_core.metrics import classification_metrics
from bert_core.training.model import PRETRAINING_CLASSES, architecture_of, resolve_model

matplotlib.use("Agg")  # files only, no display: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

# Suite sizes: what a run costs. `tiny` is for tests and smoke runs (about a minute on 2 cores for a bert-tiny).
# `data_dir_tasks`: tasks added when `data_dir` holds their files; `data_dir` then also supplies the size's own
# tasks only when the size says `full_files`.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"tasks": ("sst2",), "seeds": (0, 1), "learning_rates": (1e-3,), "num_train_epochs": 1,
             "max_train_steps": 20},
    "default": {"tasks": ("sst2", "mrpc"), "seeds": (0, 1, 2), "learning_rates": (1e-4, 3e-4, 1e-3),
                "num_train_epochs": 3, "max_train_steps": None, "data_dir_tasks": ("conll2003",)},
    "full": {"tasks": ("sst2", "mrpc", "conll2003"), "seeds": (0, 1, 2), "learning_rates": (1e-4, 3e-4, 1e-3),
             "num_train_epochs": 3, "max_train_steps": None, "full_files": True},
}
TWIN_SEED = 1234  # the init seed of every random-init twin: one twin per architecture and tokenizer


@dataclass(frozen=True, kw_only=True)
class SuiteConfig:
    encoder: str  # a pretrained model directory (BertForPreTraining save_pretrained output) or models:/ URI
    output_dir: str
    # tiny (SST-2, 2 seeds, one learning rate, 20 steps: about a minute), default (SST-2 and MRPC samples, plus
    # CoNLL-2003 NER when data_dir holds it; seeds 0-2, three learning rates, 3 epochs with early stopping) or full
    # (the same on the full train sets in data_dir); the fields below, when given, override it.
    size: Literal[tuple(SIZES)] = "default"
    tasks: tuple[str, ...] | None = None  # catalogue task names instead of the size's
    task_file: str | None = None  # a JSON/YAML catalogue file for tasks of your own
    seeds: tuple[int, ...] | None = None  # fine-tuning seeds instead of the size's
    learning_rates: tuple[float, ...] | None = None  # the learning-rate grid instead of the size's; each arm keeps its best
    num_train_epochs: PositiveInt | None = None  # instead of the size's
    max_train_steps: PositiveInt | None = None  # instead of the size's
    max_seq_length: SeqLength = TrainingConfig.max_seq_length  # tokens per fine-tuning example
    early_stopping_patience: int = 1  # evaluations without a better dev metric before a run stops
    per_device_train_batch_size: PositiveInt = 32  # fine-tuning batch size
    twin_dir: str | None = None  # where the twin and its runs are cached; default: $BERTFLOW_HOME/suite-twins
    data_dir: str | None = None  # full task files, laid out like ../shared/data/tasks (sst2/train.tsv, ...)

    def __post_init__(self):
        check_fields(self)
        if self.full_files and not self.data_dir:
            raise ConfigError(f"SuiteConfig.size {self.size!r} fine-tunes on full train sets: give data_dir (a folder "
                              f"laid out like ../shared/data/tasks)")

    @property
    def full_files(self) -> bool:
        """Whether this size fine-tunes on the tasks' full train sets (from `data_dir`)."""
        return bool(SIZES[self.size].get("full_files"))

    def protocol(self) -> dict[str, Any]:
        """The settings both arms are fine-tuned with: the size's, overridden by the fields given."""
        values = {k: v for k, v in SIZES[self.size].items() if k not in ("data_dir_tasks", "full_files")}
        if self.data_dir:
            values["tasks"] = (*values["tasks"], *[t for t in SIZES[self.size].get("data_dir_tasks", ())
                                                   if _has_files(get_task(t, self.task_file), self.data_dir)])
        for name in ("tasks", "seeds", "learning_rates", "num_train_epochs", "max_train_steps"):
            if getattr(self, name) is not None:
                values[name] = getattr(self, name)
        values.update(max_seq_length=self.max_seq_length, early_stopping_patience=self.early_stopping_patience,
                      per_device_train_batch_size=self.per_device_train_batch_size,
                      full_files=self.full_files)
        return values

    def task_files(self, task) -> tuple[str, str]:
        """A task's (train, dev) files: from `data_dir` for a `full` size and for tasks without a bundled sample,
        else the bundled sample."""
        if self.data_dir and (self.full_files or task.train_file is None):
            return task.files(data_dir=self.data_dir)
        return task.files()


def _has_files(task, data_dir: str) -> bool:
    try:
        task.files(data_dir=data_dir)
    except ConfigError:
        return False
    return True


def random_init_twin(encoder_dir: str | Path, cache_root: str | Path, seed: int = TWIN_SEED) -> Path:
    """The encoder's random-init twin (same config and tokenizer, fresh weights from `seed`), built once per
    architecture, tokenizer and seed under `cache_root`."""
    encoder_dir = Path(encoder_dir)
    config = AutoConfig.from_pretrained(encoder_dir)
    # Not the encoder's path (`_name_or_path`: every new encoder would miss the cache) nor its tokenizer files' bytes
    # (their bookkeeping differs between transformers versions): the architecture and the tokenizer's definition.
    architecture = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    key = stage.hash_json({"architecture": architecture, "tokenizer": tokenizer_hash(tokenizer), "seed": seed,
                           "version": 2})
    twin = Path(cache_root) / key[:16] / "model"
    if (twin / "config.json").is_file():
        return twin
    with stage.atomic_directory(twin) as tmp:
        torch.manual_seed(seed)
        PRETRAINING_CLASSES[architecture_of(config)](config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return twin


def _arm_runs(model_dir: Path, out: Path, task, files: tuple[str, str],
              protocol: dict[str, Any]) -> tuple[dict[float, list[float]], int]:
    """Dev scores by learning rate (one per seed) of one arm on one task, and how many runs were already done."""
    metric = suite_metric(task)
    scores: dict[float, list[float]] = {}
    reused = 0
    for lr in protocol["learning_rates"]:
        for seed in protocol["seeds"]:
            run_dir = out / task.name / f"lr-{lr:g}" / f"seed-{seed}"
            reused += (run_dir / "summary.json").is_file()
            common = dict(model_name_or_path=str(model_dir), train_file=files[0], validation_file=files[1],
                          output_dir=str(run_dir), max_seq_length=task.max_seq_length or protocol["max_seq_length"],
                          learning_rate=lr, num_train_epochs=protocol["num_train_epochs"],
                          max_train_steps=protocol["max_train_steps"],
                          early_stopping_patience=protocol["early_stopping_patience"],
                          per_device_train_batch_size=protocol["per_device_train_batch_size"], seed=seed)
            summary = task.task_kind.run(task.task_kind.build_config(task, **common))
            scores.setdefault(lr, []).append(float(summary[metric]))
    return scores, reused


def suite_metric(task) -> str:
    """The dev metric a task is scored by in the suite: the one that picks its fine-tuned checkpoint (MRPC: F1),
    else its primary metric (accuracy, entity F1)."""
    return f"eval_{task.metric_for_best_model}" if task.metric_for_best_model else task.primary_metric


def _best(scores: dict[float, list[float]]) -> tuple[float, list[float]]:
    lr = max(scores, key=lambda k: (float(np.mean(scores[k])), -k))
    return lr, scores[lr]


def paired_p_value(a: list[float], b: list[float]) -> float:
    """Two-sided paired t-test over seeds (NaN with fewer than 2 pairs or no spread in the differences)."""
    diff = np.asarray(a) - np.asarray(b)
    if diff.size < 2 or np.allclose(diff, diff[0]):  # equal differences up to float noise: no spread to test
        return float("nan")
    return float(stats.ttest_rel(a, b).pvalue)


def run_suite(config: SuiteConfig) -> dict[str, Any]:
    """Fine-tune every task from the encoder and from its twin; write `report.json` and `report.md`; return the
    report: per task the arms' mean/std at their best learning rate, the difference and its paired p-value, and
    each arm's suite score."""
    protocol = config.protocol()
    encoder = Path(resolve_model(config.encoder))
    out = Path(config.output_dir)
    twin_root = Path(config.twin_dir) if config.twin_dir else stage.bertflow_home() / "suite-twins"
    twin = random_init_twin(encoder, twin_root)
    tasks = [get_task(name, config.task_file) for name in protocol["tasks"]]
    for task in tasks:
        if not task.task_kind.in_suite:
            suited = ", ".join(kind.name for kind in TASK_KINDS.values() if kind.in_suite)
            raise ConfigError(f"suite task {task.name!r} is a {task.kind} task; the suite runs tasks of the kinds "
                              f"{suited}")
    rows, twin_reused = [], 0
    for task in tasks:
        files = config.task_files(task)
        pre_scores, _ = _arm_runs(encoder, out / "pretrained", task, files, protocol)
        twin_scores, reused = _arm_runs(twin, twin.parent / "runs", task, files, protocol)
        twin_reused += reused
        (pre_lr, pre), (twin_lr, rnd) = _best(pre_scores), _best(twin_scores)
        rows.append({"task": task.name, "metric": suite_metric(task), "seeds": list(protocol["seeds"]),
                     "train_file": files[0], "validation_file": files[1], **_task_facts(task, files),
                     "pretrained_mean": float(np.mean(pre)), "pretrained_std": float(np.std(pre, ddof=1)) if len(pre) > 1 else 0.0,
                     "twin_mean": float(np.mean(rnd)), "twin_std": float(np.std(rnd, ddof=1)) if len(rnd) > 1 else 0.0,
                     "delta": float(np.mean(pre) - np.mean(rnd)), "paired_p_value": paired_p_value(pre, rnd),
                     "pretrained_learning_rate": pre_lr, "twin_learning_rate": twin_lr,
                     "pretrained_scores": pre, "twin_scores": rnd})
    report = {"encoder": str(encoder), "twin": str(twin), "output_dir": str(out), "protocol": protocol, "tasks": rows,
              "suite_score": float(np.mean([r["pretrained_mean"] for r in rows])),
              "twin_suite_score": float(np.mean([r["twin_mean"] for r in rows])),
              "twin_runs_reused": twin_reused}
    report["suite_delta"] = report["suite_score"] - report["twin_suite_score"]
    out.mkdir(parents=True, exist_ok=True)
    stage.write_json(out / "report.json", report)
    (out / "report.md").write_text(render_report(report), encoding="utf-8")
    plot_report(report, out / "report.png")
    return report


def _task_facts(task, files: tuple[str, str]) -> dict[str, Any]:
    """How many training and dev examples the task's files hold, and the majority baseline: the suite metric of
    predicting the training set's most frequent label for every dev example. A score near it means the arm learned
    little (MRPC's dev F1 is 0.812 for "paraphrase" on all). Each kind names its own (`kinds.TaskKind.baseline`)."""
    return load(task.task_kind.baseline)(task, files)


def token_facts(task, files: tuple[str, str]) -> dict[str, Any]:
    """NER: sentences, and "no entity anywhere" as the floor (entity F1 0)."""
    return {"train_examples": len(task.task_kind.read(files[0])),
            "validation_examples": len(task.task_kind.read(files[1])), "majority_baseline": 0.0}


def classification_facts(task, files: tuple[str, str]) -> dict[str, Any]:
    """Sentence and pair classification: examples, and the training set's most frequent label as the floor."""
    (train, _, train_labels), (dev, _, dev_labels) = [
        task.task_kind.read(f, text_column=task.text_column, label_column=task.label_column,
                            text_pair_column=task.text_pair_column, label_names=task.label_names) for f in files]
    majority = np.full_like(dev_labels, np.bincount(train_labels).argmax())
    baseline = classification_metrics(dev_labels, majority, len(task.label_names))
    return {"train_examples": len(train), "validation_examples": len(dev),
            "majority_baseline": float(baseline[suite_metric(task).removeprefix("eval_")])}


def seed_scores(report: dict[str, Any], arm: str = "pretrained") -> list[float]:
    """The suite score of each fine-tuning seed: the mean over tasks of that seed's run (at each task's best
    learning rate); `arm` "pretrained" or "twin"."""
    return [float(np.mean(column)) for column in zip(*(r[f"{arm}_scores"] for r in report["tasks"]))]


def compare(candidate: dict[str, Any], champion: dict[str, Any]) -> dict[str, float]:
    """Two encoders' reports on the same suite (tasks and seeds): their scores, the gain and a paired t-test over
    the per-seed suite scores."""
    if [r["task"] for r in candidate["tasks"]] != [r["task"] for r in champion["tasks"]] or \
            candidate["protocol"]["seeds"] != champion["protocol"]["seeds"]:
        raise ValueError("the two suite reports ran different tasks or seeds; they cannot be compared")
    return {"suite_score": candidate["suite_score"], "champion_suite_score": champion["suite_score"],
            "suite_gain": candidate["suite_score"] - champion["suite_score"],
            "paired_p_value": paired_p_value(seed_scores(candidate), seed_scores(champion))}


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report as MLflow metrics: suite scores, and per task both arms' mean and std, the delta and p-value."""
    return {**{k: float(report[k]) for k in ("suite_score", "twin_suite_score", "suite_delta")},
            **task_metrics(report["tasks"])}


def task_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per task of a report, both arms' mean and std, the delta and the p-value as `suite_<task>_<field>`."""
    return {f"suite_{r['task']}_{field}": float(r[field]) for r in rows
            for field in ("pretrained_mean", "pretrained_std", "twin_mean", "twin_std", "delta", "paired_p_value",
                          "majority_baseline")
            if not math.isnan(r[field])}


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Per-task bars of both arms (mean over seeds) with their std as error bars."""
    rows = report["tasks"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rows), 3.6))
    for offset, arm, label in ((-0.2, "pretrained", "pretrained"), (0.2, "twin", "random init")):
        ax.bar(x + offset, [r[f"{arm}_mean"] for r in rows], 0.4, yerr=[r[f"{arm}_std"] for r in rows], capsize=4,
               label=label)
    # Each task's majority-class score: bars near it learned little (MRPC's F1 is 0.812 for "paraphrase" on all).
    ax.hlines([r["majority_baseline"] for r in rows], x - 0.42, x + 0.42, colors="black",
              linestyles="dashed", linewidth=1, label="majority class")
    ax.set_xticks(x, [f"{r['task']}\n{r['metric'].removeprefix('eval_')}" for r in rows])
    ax.set_ylim(0, 1.15)  # room above the bars for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title(f"{len(report['protocol']['seeds'])} seeds; suite {report['suite_score']:.3f} vs "
                 f"{report['twin_suite_score']:.3f} random init", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", ncol=3, frameon=False)
    fig.tight_layout()
    with stage.atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def summary_line(report: dict[str, Any]) -> str:
    """`suite: pretrained vs random init: SST2 +x.x (n seeds)`, in points of each task's primary metric."""
    deltas = ", ".join(f"{r['task'].upper()} {100 * r['delta']:+.1f}" for r in report["tasks"])
    floor = [r["task"].upper() for r in report["tasks"] if at_majority_class(r)]
    return (f"suite: pretrained vs random init: {deltas} ({len(report['protocol']['seeds'])} seeds)"
            + (f"; both arms at the majority-class score: {', '.join(floor)}" if floor else ""))


MAJORITY_MARGIN = 0.005  # within half a point of the majority-class score: the task was not learned


def at_majority_class(row: dict[str, Any]) -> bool:
    """Whether neither arm's mean is more than `MAJORITY_MARGIN` above the task's majority-class score (MRPC's F1
    of 0.812 for "paraphrase" on every pair): a delta between two such arms says nothing about pretraining."""
    return max(row["pretrained_mean"], row["twin_mean"]) <= row["majority_baseline"] + MAJORITY_MARGIN


def render_report(report: dict[str, Any]) -> str:
    lines = ["# Downstream suite: pretrained vs random-init twin", "", summary_line(report), "",
             "| task | train / dev | metric | majority class | pretrained | random init | difference | paired p |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["tasks"]:
        p = "n/a" if math.isnan(r["paired_p_value"]) else f"{r['paired_p_value']:.3g}"
        lines.append(f"| {r['task']} | {r['train_examples']:,} / {r['validation_examples']:,} | {r['metric']} | "
                     f"{r['majority_baseline']:.4f} | {r['pretrained_mean']:.4f} +- {r['pretrained_std']:.4f} | "
                     f"{r['twin_mean']:.4f} +- {r['twin_std']:.4f} | {r['delta']:+.4f} | {p} |")
    lines += ["", "Majority class: the metric of predicting the most frequent training label for every dev example; "
                  "an arm near it learned little from the task.",
              "", f"Suite score {report['suite_score']:.4f} (random init {report['twin_suite_score']:.4f}); "
                  f"protocol {report['protocol']}."]
    return "\n".join(lines) + "\n"
