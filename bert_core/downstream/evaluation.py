"""Evaluation: held-out MLM/NSP metrics of pretrained models and task metrics of task models (reports and plots
are `bert_core.downstream.reports`').

Pretrained models are scored on the validation shards, which always carry fixed (static) masks, so two models are
compared on exactly the same predictions. Task models are scored on a labelled dev file: classifiers by accuracy,
F1 of the positive class (binary) or macro-F1, Matthews correlation and the confusion matrix; NER models by
entity-level F1 (seqeval); QA models by SQuAD exact match and F1. `evaluate_task` writes the report (metrics,
per-example predictions, a plot, markdown) and compares with the current champion on the same file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from math import comb
from pathlib import Path
from typing import Any

import numpy as np
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
    AutoModelForTokenClassification, AutoTokenizer)

from bert_core.downstream.classification import predict_labels, read_task_file
from bert_core.downstream.kinds import DEFAULT_MODEL_KIND, MODEL_KINDS, model_kind
from bert_core.downstream.ner import entity_metrics, predict_tags, read_conll
from bert_core.downstream.qa import answer_questions, question_score, summarise_scores
from bert_core.downstream.reports import bar_plot, render_task_report, write_confusion_matrix_plot
from bert_core.examples.shards import ShardDataset
from bert_core.ingest.textfiles import read_squad
from bert_core.metrics import classification_metrics
from bert_core.stage import atomic_file, write_json
from bert_core.training.data import PretrainingCollator
from bert_core.training.model import (PretrainingObjective, evaluate_objective, load_pretraining_model,
    model_description, resolve_model)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """What `python -m bert_core evaluate --config` scores: a pretrained model and/or a classifier."""

    model_dir: str | None = None  # a BertForPreTraining save_pretrained directory...
    shards_dir: str | None = None  # ...scored on this static-masked split (e.g. <examples>/validation)
    classifier_dir: str | None = None  # a fine-tuned task model...
    data_file: str | None = None  # ...scored on this labelled file (TSV/CSV/JSONL/Parquet, CoNLL, SQuAD JSON)
    champion_dir: str | None = None  # a model (directory or models:/name@champion) to compare with on the same file
    output_dir: str | None = None  # where the task model's report goes
    # How the classifier reads `data_file`. Empty: what its directory describes (bertflow's fine-tuning writes it);
    # for a model from elsewhere, a classifier read with its kind's config defaults (columns, window, doc_stride).
    kind: str | None = None  # a model kind of `bert_core.downstream.kinds` ("classifier", "token-classifier", ...)
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    truncation: str | None = None
    max_seq_length: int | None = None
    doc_stride: int | None = None
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
        champion = resolve_model(config.champion_dir) if config.champion_dir else None
        model_dir = resolve_model(config.classifier_dir)
        result = evaluate_task(config.kind or model_description(model_dir).get("kind", DEFAULT_MODEL_KIND), model_dir,
                               config.data_file, output_dir, champion_dir=champion,
                               **{k: getattr(config, k) for k in _READING})
        results["classifier"] = {k: v for k, v in result.items() if k != "report_markdown"}
    return results


def evaluate_pretrained(model_dir: str | Path, shards_dir: str | Path, *, batch_size: int = 64) -> dict[str, float]:
    """Held-out MLM/NSP metrics of a saved pretrained encoder (BERT or ModernBERT) on one split of static-masked
    shards."""
    dataset = ShardDataset(shards_dir)
    if not dataset.static_masks:
        raise ValueError(f"{shards_dir} holds unmasked examples; held-out evaluation needs static masks")
    model = load_pretraining_model(model_dir)
    if model.config.vocab_size != dataset.manifest["vocab_size"]:
        raise ValueError(f"model vocab {model.config.vocab_size} != shard vocab {dataset.manifest['vocab_size']}")
    collator = PretrainingCollator(vocab_size=model.config.vocab_size)
    return evaluate_objective(PretrainingObjective(model), dataset, collator, batch_size=batch_size, device="cpu")


# --- Task models: one scoring function per kind, one report for all ---

# Model kinds and their primary metric: bert_core.downstream.catalogue.

@dataclass
class TaskScore:
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]  # one per example, written to predictions.jsonl
    correct: np.ndarray  # per example: right (classifier label, NER sentence, QA exact match)
    plots: dict[str, Any]  # name -> callable(path) drawing a plot


def score_classifier(model_dir, data_file, *, text_column, text_pair_column, label_column, max_seq_length,
                      truncation, **_) -> TaskScore:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    texts, pairs, labels = read_task_file(data_file, text_column, label_column, text_pair_column=text_pair_column,
                                          label_names=tuple(label_names))
    predictions, probabilities = predict_labels(model, tokenizer, texts, pairs=pairs, max_seq_length=max_seq_length,
                                                truncation=truncation)
    metrics = {**classification_metrics(labels, predictions, model.config.num_labels), "label_names": label_names}
    rows = [{"text": text, **({"text_pair": pairs[i]} if pairs else {}), "label": label_names[int(labels[i])],
             "prediction": label_names[int(predictions[i])],
             "probabilities": [round(float(q), 6) for q in probabilities[i]]} for i, text in enumerate(texts)]
    plots = {"confusion_matrix.png": lambda path: write_confusion_matrix_plot(metrics["confusion_matrix"],
                                                                              label_names, path)}
    return TaskScore(metrics, rows, labels == predictions, plots)


def score_ner(model_dir, data_file, *, max_seq_length, **_) -> TaskScore:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir)
    sentences = read_conll(data_file)
    words, gold = [w for w, _ in sentences], [t for _, t in sentences]
    predicted = predict_tags(model, tokenizer, words, max_seq_length=max_seq_length)
    metrics = entity_metrics(gold, predicted)
    # Tag-level confusion, in the model's label order (tags the model does not know go to no row).
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    index = {name: i for i, name in enumerate(names)}
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    for gs, ps in zip(gold, predicted):
        for g, p in zip(gs, ps):
            if g in index and p in index:
                confusion[index[g], index[p]] += 1
    metrics["tag_confusion_matrix"] = confusion.tolist()
    rows = [{"words": w, "tags": g, "predicted": p} for w, g, p in zip(words, gold, predicted)]
    correct = np.asarray([g == p for g, p in zip(gold, predicted)])
    plots = {"confusion_matrix.png": lambda path: write_confusion_matrix_plot(metrics["tag_confusion_matrix"],
                                                                              names, path, title="Tag confusion (dev)")}
    return TaskScore(metrics, rows, correct, plots)


def score_qa(model_dir, data_file, *, max_seq_length, doc_stride, **_) -> TaskScore:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir)
    questions = read_squad(data_file)
    answers = answer_questions(model, tokenizer, [q.question for q in questions], [q.context for q in questions],
                               max_seq_length=max_seq_length, doc_stride=min(doc_stride, max_seq_length // 2))
    scores = [question_score(q, a["answer"]) for q, a in zip(questions, answers)]
    metrics = summarise_scores([score for q, score in zip(questions, scores) if q.answers])
    rows, correct, by_type = [], [], {}
    for q, a, (exact, f1) in zip(questions, answers, scores):
        rows.append({"id": q.id, "question": q.question, "answers": list(q.answers), "prediction": a["answer"],
                     "exact_match": exact, "f1": round(f1, 4)})
        correct.append(exact)
        by_type.setdefault(_question_type(q.question), []).append(f1)
    metrics["f1_by_question_type"] = {k: 100.0 * float(np.mean(v)) for k, v in sorted(by_type.items())}
    metrics["questions_by_type"] = {k: len(v) for k, v in sorted(by_type.items())}
    plots = {"f1_by_question_type.png": lambda path: bar_plot(metrics["f1_by_question_type"],
                                                               metrics["questions_by_type"], path)}
    return TaskScore(metrics, rows, np.asarray(correct), plots)


def _question_type(question: str) -> str:
    words = question.lower().replace("?", " ").split()
    for word in ("what", "which", "who", "whom", "whose", "when", "where", "why", "how"):
        if word in words:
            return "who" if word in ("whom", "whose") else word
    return "other"


def mcnemar_p_value(new_only: int, champion_only: int) -> float:
    """Two-sided exact McNemar test: the probability of a split of the discordant examples at least this uneven
    if both models were equally good (binomial, p = 1/2)."""
    n, k = new_only + champion_only, min(new_only, champion_only)
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


# How a task model reads a dev file: the options of the scorers. A model whose directory does not say
# (`model.describe_model` does) is read with its kind's config defaults.
_READING = ("text_column", "text_pair_column", "label_column", "max_seq_length", "truncation", "doc_stride")


def _reading_defaults(kind: str) -> dict[str, Any]:
    config = model_kind(kind).config_class
    return {name: getattr(config, name, None) for name in _READING}


def evaluate_task(kind: str | None, model_dir: str | Path, data_file: str | Path, output_dir: str | Path, *,
                  champion_dir: str | Path | None = None, **reading: Any) -> dict[str, Any]:
    """Score a fine-tuned model on a labelled dev file and write its report under `output_dir`.

    Writes `metrics.json`, `predictions.jsonl` (one row per example: input, gold, prediction), the kind's plot
    (confusion matrix for classifiers and NER tags, F1 by question word for QA) and `report.md`. With
    `champion_dir`, the champion is scored on the same file and the report compares the two: each metric and its
    difference, how many examples only one of them gets right, and the exact McNemar p-value of that split.
    The model's kind and how it reads the file (`reading`: text/pair/label columns, max_seq_length, truncation,
    doc_stride) come from its directory's description; given values override it, for models without one.
    Returns {"kind", "primary_metric", "metrics", "champion_metrics", "comparison", "reports"}.
    """
    described = model_description(model_dir)
    unknown = sorted(set(reading) - set(_READING))
    if unknown:
        raise ValueError(f"evaluate_task: unknown reading option(s) {unknown}; expected some of {sorted(_READING)}")
    if kind and described.get("kind") and kind != described["kind"]:
        raise ValueError(f"{model_dir} is a {described['kind']} model, not a {kind}")
    kind = kind or described.get("kind")
    scored = [name for name, spec in MODEL_KINDS.items() if spec.scorer]
    if kind not in scored:
        raise ValueError(f"unknown task kind {kind!r} for {model_dir}; one of {tuple(scored)}")
    spec = model_kind(kind)
    options = {k: reading[k] if reading.get(k) is not None else described.get(k, default)
               for k, default in _reading_defaults(kind).items()}
    score = spec.score(model_dir, data_file, **options)
    champion = spec.score(champion_dir, data_file, **options) if champion_dir else None
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    primary = spec.primary_metric
    comparison = None
    if champion is not None:
        if len(champion.correct) != len(score.correct):
            raise AssertionError("champion and candidate were scored on different numbers of examples")
        new_only = int((score.correct & ~champion.correct).sum())
        champion_only = int((champion.correct & ~score.correct).sum())
        comparison = {"champion_dir": str(champion_dir), "primary_metric": primary,
                      "candidate": score.metrics[primary], "champion": champion.metrics[primary],
                      "difference": score.metrics[primary] - champion.metrics[primary],
                      "candidate_only_correct": new_only, "champion_only_correct": champion_only,
                      "mcnemar_p_value": mcnemar_p_value(new_only, champion_only)}
    write_json(output_dir / "metrics.json", {"kind": kind, "data_file": str(data_file), "model_dir": str(model_dir),
                                             **score.metrics, "champion": champion.metrics if champion else None,
                                             "comparison": comparison})
    with atomic_file(output_dir / "predictions.jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for i, row in enumerate(score.rows):
                extra = {"champion_correct": bool(champion.correct[i])} if champion else {}
                f.write(json.dumps({**row, "correct": bool(score.correct[i]), **extra}, ensure_ascii=False) + "\n")
    reports = [output_dir / "metrics.json", output_dir / "predictions.jsonl"]
    for name, draw in score.plots.items():
        reports.append(draw(output_dir / name))
    report = render_task_report(kind, data_file, score.metrics, champion.metrics if champion else None, comparison)
    (output_dir / "report.md").write_text(report, encoding="utf-8")
    reports.append(output_dir / "report.md")
    return {"kind": kind, "primary_metric": primary, "metrics": score.metrics,
            "champion_metrics": champion.metrics if champion else None, "comparison": comparison,
            "reports": [str(p) for p in reports], "report_markdown": report}
