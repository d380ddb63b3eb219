"""Extractive question answering on SQuAD-format data: doc-stride features, answer-span post-processing, EM/F1.

Input: the SQuAD v1.1 JSON (`{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}]}]}]}]}`) or JSON lines with one question per line (`id`, `question`,
`context`, `answers` as `{"text": [...], "answer_start": [...]}` the way Hugging Face datasets exports SQuAD).

A context longer than the window is cut into overlapping windows of `max_seq_length` tokens, `doc_stride` tokens of
overlap (the question, cut to `max_query_length` tokens, is repeated in each). A training window whose context does
not hold the whole answer is labelled with [CLS] (position 0), as in google-research/bert. An answer is the span
(start <= end, at most `max_answer_length` tokens, inside the context) with the highest start + end logit among the
`n_best_size` best starts and ends of every window of its question; the text comes from the context by character
offsets, so the prediction is a substring of the context. Scores are the official SQuAD v1.1 exact match and token
F1 (answers normalised: lower case, no punctuation, no articles a/an/the, single spaces), the best over the gold
answers of each question.

Training answers whose `answer_start` does not point at their text are searched for in the context (nearest
occurrence); answers not found are counted as rejected, never trained on silently.

Reading and scoring import neither torch nor transformers (the ingest stage reads SQuAD files to decontaminate).
"""

from __future__ import annotations

import collections
import json
import logging
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding

from bert_core import stage
from bert_core.config import ConfigError, PositiveInt, SeqLength
from bert_core.downstream.finetune import TrainingConfig, fit, run_key, train_loader, training_accelerator
from bert_core.ingest.textfiles import Question, read_squad
from bert_core.training.data import TokenRows
from bert_core.training.model import load_with_task_head, resolve_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class QaConfig(TrainingConfig):
    max_seq_length: SeqLength = 384  # tokens per window of question and context
    doc_stride: int = 128  # tokens of overlap between a long context's windows
    max_query_length: PositiveInt = 64  # questions are cut to this many tokens
    max_answer_length: PositiveInt = 30  # the longest answer span predicted, in tokens
    n_best_size: PositiveInt = 20  # start and end candidates considered per window
    num_train_epochs: PositiveInt = 2
    max_train_questions: PositiveInt | None = None  # train on the first N questions only (quick runs)
    metric_for_best_model: str = "f1"

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.doc_stride < self.max_seq_length:
            raise ConfigError(f"QaConfig.doc_stride is {self.doc_stride}; expected a value > 0 and < max_seq_length "
                              f"{self.max_seq_length}")
        if self.max_query_length + 3 >= self.max_seq_length:
            raise ConfigError(f"QaConfig.max_query_length is {self.max_query_length}; expected less than "
                              f"max_seq_length - 3 ({self.max_seq_length - 3}), to leave room for the context")


def split_squad_by_article(path: str | Path, out_train: str | Path, out_eval: str | Path, *,
                           eval_articles: int, seed: int = 0) -> dict[str, int]:
    """Split a SQuAD JSON file into two by whole articles (no paragraph or title in both), chosen by seed.

    For data that ship only one split (the SQuAD dev set): questions about the same article never straddle the split.
    """
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    articles = document["data"]
    if not 0 < eval_articles < len(articles):
        raise ValueError(f"eval_articles must lie in (0, {len(articles)})")
    order = np.random.default_rng(seed).permutation(len(articles))
    held = set(order[:eval_articles].tolist())
    parts = {"train": [a for i, a in enumerate(articles) if i not in held],
             "eval": [a for i, a in enumerate(articles) if i in held]}
    for name, target in (("train", out_train), ("eval", out_eval)):
        with stage.atomic_file(target) as tmp:
            Path(tmp).write_text(json.dumps({"version": document.get("version", ""), "data": parts[name]},
                                            ensure_ascii=False), encoding="utf-8")
    return {name: sum(len(p["qas"]) for a in part for p in a["paragraphs"]) for name, part in parts.items()}


# --- SQuAD v1.1 scoring (the official evaluate-v1.1.py rules) ---

def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_f1(prediction: str, gold: str) -> float:
    predicted, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(predicted) & collections.Counter(truth)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(truth)
    return 2 * precision * recall / (precision + recall)


def question_score(question: Question, prediction: str) -> tuple[bool, float]:
    """(exact match, F1 in [0, 1]) of one prediction, each the best over the question's gold answers."""
    exact = any(normalize_answer(prediction) == normalize_answer(g) for g in question.answers)
    return exact, max((answer_f1(prediction, g) for g in question.answers), default=0.0)


def summarise_scores(scores: list[tuple[bool, float]]) -> dict[str, Any]:
    """Exact match and F1 in percent, as SQuAD reports them, over per-question scores."""
    return {"exact_match": 100.0 * float(np.mean([e for e, _ in scores])) if scores else 0.0,
            "f1": 100.0 * float(np.mean([f for _, f in scores])) if scores else 0.0, "num_questions": len(scores)}


def squad_metrics(questions: list[Question], predictions: dict[str, str]) -> dict[str, Any]:
    """Exact match and F1 (in percent), best over each question's gold answers; questions without one skipped."""
    return summarise_scores([question_score(q, predictions.get(q.id, "")) for q in questions if q.answers])


# --- features ---

def _cut_questions(tokenizer, questions: list[str], max_query_length: int) -> list[str]:
    """Questions cut to max_query_length word pieces (at a piece boundary in the original text)."""
    encoded = tokenizer([q.strip() for q in questions], add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)
    cut = []
    for question, offsets in zip(questions, encoded["offset_mapping"]):
        question = question.strip()
        cut.append(question if len(offsets) <= max_query_length else question[: offsets[max_query_length - 1][1]])
    return cut


def encode_windows(tokenizer, questions: list[str], contexts: list[str], *, max_seq_length: int, doc_stride: int,
                   max_query_length: int):
    """Windows over each (question, context): a BatchEncoding with offset_mapping and overflow_to_sample_mapping.

    `doc_stride` is the overlap between consecutive windows of the context, as in Hugging Face's `stride`.
    """
    return tokenizer(_cut_questions(tokenizer, questions, max_query_length), contexts, truncation="only_second",
                     max_length=max_seq_length, stride=doc_stride, return_overflowing_tokens=True,
                     return_offsets_mapping=True)


def _context_span(sequence_ids: list[int | None]) -> tuple[int, int] | None:
    """First and last token of the context in a window (None for an empty context)."""
    if 1 not in sequence_ids:
        return None
    first = sequence_ids.index(1)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    return first, last


def locate_answer(question: Question) -> tuple[int, int] | None:
    """(start, end) character span of the first gold answer in the context, trusting answer_start when it points
    at the text and otherwise taking the occurrence nearest to it; None when the text is not in the context."""
    if not question.answers:
        return None
    text, start = question.answers[0], question.answer_starts[0]
    if question.context[start : start + len(text)] == text:
        return start, start + len(text)
    found = [m.start() for m in re.finditer(re.escape(text), question.context)]
    if not found:
        return None
    best = min(found, key=lambda s: abs(s - start))
    return best, best + len(text)


def training_features(tokenizer, questions: list[Question], config: QaConfig,
                      chunk_size: int = 1024) -> tuple[TokenRows, dict[str, int]]:
    """Windows with start/end token positions of the answer ([CLS] = 0 where the window does not hold it), as
    `TokenRows` (flat arrays; questions encoded in chunks)."""
    spans = [locate_answer(q) for q in questions]
    kept = [(q, s) for q, s in zip(questions, spans) if s is not None]
    counts = {"questions": len(questions), "rejected_answer_not_in_context": len(questions) - len(kept),
              "windows": 0, "windows_without_answer": 0}

    def chunks():
        for begin in range(0, len(kept), chunk_size):
            part = kept[begin : begin + chunk_size]
            encoded = encode_windows(tokenizer, [q.question for q, _ in part], [q.context for q, _ in part],
                                     max_seq_length=config.max_seq_length, doc_stride=config.doc_stride,
                                     max_query_length=config.max_query_length)
            starts, ends = [], []
            for i, sample in enumerate(encoded["overflow_to_sample_mapping"]):
                start_char, end_char = part[sample][1]
                offsets = encoded["offset_mapping"][i]
                first, last = _context_span(encoded.sequence_ids(i))
                start_token = end_token = 0
                if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                    start_token = first
                    while start_token <= last and offsets[start_token][1] <= start_char:
                        start_token += 1
                    end_token = last
                    while end_token >= first and offsets[end_token][0] >= end_char:
                        end_token -= 1
                else:
                    counts["windows_without_answer"] += 1
                starts.append(start_token)
                ends.append(end_token)
            counts["windows"] += len(starts)
            yield encoded["input_ids"], encoded.get("token_type_ids"), {"start_positions": starts, "end_positions": ends}

    return TokenRows.from_chunks(chunks()), counts


def answer_questions(model, tokenizer, questions: list[str], contexts: list[str], *,
                     max_seq_length: int = QaConfig.max_seq_length, doc_stride: int = QaConfig.doc_stride,
                     max_query_length: int = 64, max_answer_length: int = 30, n_best_size: int = 20, batch_size: int = 64, device="cpu") -> list[dict[str, Any]]:
    """The best answer span of each question in its context: text, character start, score (start + end logit) and
    probability (softmax over the window's start times end logits)."""
    model.eval()
    encoded = encode_windows(tokenizer, questions, contexts, max_seq_length=max_seq_length, doc_stride=doc_stride,
                             max_query_length=max_query_length)
    samples = encoded["overflow_to_sample_mapping"]
    best: list[dict[str, Any]] = [{"answer": "", "start": -1, "score": -np.inf, "probability": 0.0}
                                  for _ in questions]
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded]  # ModernBERT: no types
    # Windows sorted by length: little padding per batch.
    order = sorted(range(len(samples)), key=lambda i: len(encoded["input_ids"][i]))
    for begin in range(0, len(order), batch_size):
        chunk = order[begin : begin + batch_size]
        batch = tokenizer.pad([{k: encoded[k][i] for k in keys} for i in chunk], return_tensors="pt").to(device)
        with torch.no_grad():
            out = model(**batch)
        starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        for row, i in enumerate(chunk):
            span = _context_span(encoded.sequence_ids(i))
            if span is None:
                continue  # an empty context has no answer
            first, last = span
            start_logits, end_logits = starts[row, first : last + 1], ends[row, first : last + 1]
            top_s = np.argsort(start_logits)[::-1][:n_best_size]
            top_e = np.argsort(end_logits)[::-1][:n_best_size]
            scores = start_logits[top_s][:, None] + end_logits[top_e][None, :]
            length = top_e[None, :] - top_s[:, None]
            scores = np.where((length >= 0) & (length < max_answer_length), scores, -np.inf)
            s, e = np.unravel_index(int(np.argmax(scores)), scores.shape)
            score = float(scores[s, e])
            sample = samples[i]
            if score > best[sample]["score"]:
                offsets = encoded["offset_mapping"][i]
                lo, hi = offsets[first + int(top_s[s])][0], offsets[first + int(top_e[e])][1]
                window_start = _softmax(starts[row, : len(offsets)])[first + int(top_s[s])]
                window_end = _softmax(ends[row, : len(offsets)])[first + int(top_e[e])]
                best[sample] = {"answer": contexts[sample][lo:hi], "start": int(lo), "score": score,
                                "probability": float(window_start * window_end)}
    return best


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def finetune_qa(config: QaConfig) -> dict[str, Any]:
    """Fine-tune an extractive QA model; score EM/F1 on the validation file; skip when done with the same inputs."""
    output_dir = Path(config.output_dir)
    model_path = resolve_model(config.model_name_or_path)
    key = run_key(config, model_path, version=2)
    if stage.completed_stage(output_dir, key):
        return stage.read_json(output_dir / "summary.json")
    accelerator = training_accelerator(config)
    set_seed(config.seed)
    train = read_squad(config.train_file)[: config.max_train_questions]
    dev = read_squad(config.validation_file)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{model_path}: extractive QA needs a fast tokenizer (tokenizer.json) for character offsets")
    model = load_with_task_head(AutoModelForQuestionAnswering, model_path)
    rows, counts = training_features(tokenizer, train, config)
    if counts["rejected_answer_not_in_context"]:
        logger.warning("qa: %d training questions rejected: the answer text is not in the context",
                       counts["rejected_answer_not_in_context"])
    loader = train_loader(rows, config, DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8))

    def dev_metrics(model) -> dict[str, Any]:
        answers = answer_questions(model, tokenizer, [q.question for q in dev], [q.context for q in dev],
                                   max_seq_length=config.max_seq_length, doc_stride=config.doc_stride,
                                   max_query_length=config.max_query_length,
                                   max_answer_length=config.max_answer_length, n_best_size=config.n_best_size,
                                   batch_size=config.per_device_eval_batch_size, device=accelerator.device)
        return squad_metrics(dev, {q.id: a["answer"] for q, a in zip(dev, answers)})

    def loss_of(model, batch) -> torch.Tensor:
        return model(**batch).loss

    return fit(accelerator, model, tokenizer, loader, loss_of=loss_of, dev_metrics=dev_metrics, config=config,
               output_dir=output_dir, key=key, stage_name="finetune-qa", summary={"train": counts},
               description={"doc_stride": config.doc_stride})
