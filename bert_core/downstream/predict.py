"""Inference with a pretrained or fine-tuned BERT: fill-mask, NSP probability, classification, QA, embeddings.

`python -m bert_core predict --model M --task T ...` where M is a directory, `models:/name@alias` (a registered
MLflow model) or an installed package that ships one (see `model.resolve_model`). Results are JSON lines on
stdout; embeddings are written to `--output`: `<output>.npy` (one pooled vector per text, [CLS] or mean) and
`<output>.arrow` (per-token last hidden states, one row per text with its tokens), so that the same word in two
contexts gets two different vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from transformers import (AutoConfig, AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
    AutoTokenizer, BertForNextSentencePrediction)

from bert_core.downstream.classification import FinetuneConfig, predict_labels
from bert_core.downstream.qa import QaConfig, answer_questions
from bert_core.examples.shards import write_table_file

TASKS = ("fill-mask", "nsp", "classify", "qa", "embed")


def fill_mask(model_dir: str, texts: list[str], top_k: int = 5) -> list[list[list[dict[str, Any]]]]:
    """For each text, for each [MASK] in it, the top_k (token, score) guesses."""
    from transformers import pipeline  # lazy: transformers.pipelines loads every task's code; fill-mask only

    fill = pipeline("fill-mask", model=model_dir, tokenizer=model_dir, top_k=top_k, device="cpu")
    results = []
    for text in texts:
        if fill.tokenizer.mask_token not in text:
            raise ValueError(f"no {fill.tokenizer.mask_token} in {text!r}")
        out = fill(text)
        per_mask = out if isinstance(out[0], list) else [out]  # one list per [MASK] when there are several
        results.append([[{"token": g["token_str"], "score": round(float(g["score"]), 6)} for g in guesses]
                        for guesses in per_mask])
    return results


@torch.no_grad()
def next_sentence_probability(model_dir: str, first: list[str], second: list[str]) -> list[float]:
    """P(second follows first) from the pretraining NSP head (label 0 = actual next)."""
    model_type = AutoConfig.from_pretrained(model_dir).model_type
    if model_type != "bert":
        raise ValueError(f"{model_dir} is a {model_type} model without a next-sentence head; next-sentence "
                         f"probability needs a BERT pretrained with NSP or SOP")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = BertForNextSentencePrediction.from_pretrained(model_dir).eval()
    batch = tokenizer(first, second, truncation=True, max_length=512, padding=True, return_tensors="pt")
    return torch.softmax(model(**batch).logits.float(), dim=-1)[:, 0].tolist()


def classify(model_dir: str, texts: list[str], pairs: list[str] | None = None,
             max_seq_length: int | None = None) -> list[dict[str, Any]]:
    """Label and class probabilities of each text (or text pair) from a fine-tuned classifier (`max_seq_length`
    None: fine-tuning's default)."""
    max_seq_length = max_seq_length or FinetuneConfig.max_seq_length

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    ids, probabilities = predict_labels(model, tokenizer, texts, pairs=pairs, max_seq_length=max_seq_length)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return [{"label": names[int(i)], "score": round(float(p[int(i)]), 6),
             "probabilities": {n: round(float(q), 6) for n, q in zip(names, p)}} for i, p in zip(ids, probabilities)]


def answer(model_dir: str, questions: list[str], contexts: list[str], max_seq_length: int | None = None,
           doc_stride: int | None = None) -> list[dict[str, Any]]:
    """The answer span of each question in its context from a fine-tuned extractive QA model (see
    `bert_core.downstream.qa`; None: QA fine-tuning's window and stride)."""
    max_seq_length, doc_stride = max_seq_length or QaConfig.max_seq_length, doc_stride or QaConfig.doc_stride

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir)
    found = answer_questions(model, tokenizer, questions, contexts, max_seq_length=max_seq_length,
                             doc_stride=min(doc_stride, max_seq_length // 2))
    return [{"answer": a["answer"], "start": a["start"], "score": round(a["score"], 4),
             "probability": round(a["probability"], 6)} for a in found]


@torch.no_grad()
def embed(model_dir: str, texts: list[str], output: str | Path, *, pooling: str = "mean",
          max_seq_length: int = 512, batch_size: int = 32) -> dict[str, Any]:
    """Write pooled sentence vectors (`.npy`) and per-token vectors (`.arrow`); return their paths and shapes."""
    if pooling not in {"mean", "cls"}:
        raise ValueError(f"unknown pooling {pooling!r}; choose 'mean' or 'cls'")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    pooled, rows_tokens, rows_vectors = [], [], []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_seq_length, padding=True,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled.append((hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)).numpy())
        for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
            rows_tokens.append(tokenizer.convert_ids_to_tokens(batch["input_ids"][row, :length].tolist()))
            rows_vectors.append(hidden[row, :length].numpy())
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    vectors = np.concatenate(pooled)
    np.save(output.with_suffix(".npy"), vectors)
    width = vectors.shape[1]
    table = pa.table({
        "text": texts,
        "tokens": rows_tokens,
        "vectors": pa.array([v.reshape(-1) for v in rows_vectors], type=pa.list_(pa.float32())),
    })
    write_table_file(output.with_suffix(".arrow"), table)
    return {"pooled": str(output.with_suffix(".npy")), "tokens": str(output.with_suffix(".arrow")),
            "num_texts": len(texts), "hidden_size": int(width), "pooling": pooling}


def token_vectors(arrow_path: str | Path, hidden_size: int) -> list[tuple[list[str], np.ndarray]]:
    """Read back `embed`'s per-token file: (tokens, vectors of shape (tokens, hidden)) per text."""
    table = pa.ipc.open_file(str(arrow_path)).read_all()
    return [(tokens, np.asarray(flat, dtype=np.float32).reshape(-1, hidden_size))
            for tokens, flat in zip(table.column("tokens").to_pylist(), table.column("vectors").to_pylist())]
