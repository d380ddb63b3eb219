"""Sequence classification: single sentences (SST-2, IMDb) or sentence pairs (MRPC, RTE), the `sentence` and
`pair` task kinds.

The task data is a labelled file (TSV/CSV with a header, JSONL, or Parquet; optionally gzip-compressed) with a
text column, an optional second text column for pairs, and a label column (integers, or strings named in
`label_names`). Long texts keep their head and tail (`truncation="head_tail"`, Sun et al. 2019: the first quarter
of the budget from the start, the rest from the end), which suits reviews whose verdict comes last. The loop is
`bert_core.downstream.finetune.fit`, shared with NER and QA. The result is `output_dir/final/` (save_pretrained
model with id2label + tokenizer), `metrics.jsonl` and `summary.json` with the dev-set metrics of the final model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate.utils import set_seed
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from bert_core import stage
from bert_core.config import ConfigError
from bert_core.downstream.finetune import TrainingConfig, fit, run_key, train_loader, training_accelerator
from bert_core.ingest.textfiles import read_table_file
from bert_core.metrics import classification_metrics
from bert_core.training.data import TokenRows
from bert_core.training.model import load_with_task_head, resolve_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(TrainingConfig):
    text_column: str = "sentence"  # the text column of the task files (a catalogue task names its own)
    label_column: str = "label"  # the label column (a catalogue task names its own)
    label_names: tuple[str, ...] = ("negative", "positive")  # the labels, in id order (a catalogue task names its own)
    text_pair_column: str | None = None  # second text of a sentence pair (MRPC "#2 String", RTE "sentence2")
    truncation: Literal["head", "head_tail"] = "head"  # "head": keep the start; "head_tail": keep the start and the end of long texts
    freeze_encoder: bool = False  # train only the classification head
    class_weights: Literal["balanced"] | None = None  # "balanced": weight the loss by inverse label frequency

    def __post_init__(self):
        super().__post_init__()
        if len(self.label_names) < 2:
            raise ConfigError(f"FinetuneConfig.label_names is {list(self.label_names)}; expected 2 or more labels")


def read_task_file(path: str | Path, text_column: str, label_column: str, *, text_pair_column: str | None = None,
                   label_names: tuple[str, ...] = ()) -> tuple[list[str], list[str] | None, np.ndarray]:
    """(texts, second texts of pairs or None, integer labels) from a TSV/CSV/JSONL/Parquet file (gzip allowed).

    String labels are mapped through `label_names` (their position is the id); an unknown one is an error.
    """
    columns = (text_column,) + ((text_pair_column,) if text_pair_column else ())
    table = read_table_file(path, string_columns=columns)
    for column in (*columns, label_column):
        if column not in table.column_names:
            raise ValueError(f"{path}: no column {column!r} (columns: {table.column_names})")
    texts = [str(t).strip() for t in table.column(text_column).to_pylist()]
    pairs = [str(t).strip() for t in table.column(text_pair_column).to_pylist()] if text_pair_column else None
    raw = table.column(label_column).to_pylist()
    if raw and all(isinstance(v, str) for v in raw):
        ids = {name: i for i, name in enumerate(label_names)}
        unknown = sorted({v for v in raw if v not in ids})
        if unknown:
            raise ValueError(f"{path}: labels {unknown[:5]} are not among label_names {list(label_names)}")
        return texts, pairs, np.asarray([ids[v] for v in raw], dtype=np.int64)
    labels = np.asarray(raw)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels in {label_column!r} must be integers or names, found {labels.dtype}")
    return texts, pairs, labels.astype(np.int64)


def read_labelled_texts(path: str | Path, text_column: str, label_column: str) -> tuple[list[str], np.ndarray]:
    """Texts and integer labels of a single-text task file (see `read_task_file`)."""
    texts, _, labels = read_task_file(path, text_column, label_column)
    return texts, labels


def encode_texts(tokenizer, texts: list[str], pairs: list[str] | None, *, max_seq_length: int,
                 truncation: str = "head") -> dict[str, list[list[int]]]:
    """Token ids (with [CLS]/[SEP] and token types) of texts or text pairs, cut to max_seq_length."""
    if truncation not in {"head", "head_tail"}:
        raise ValueError(f"unknown truncation {truncation!r}; choose 'head' or 'head_tail'")
    if pairs is not None or truncation == "head":
        return dict(tokenizer(texts, pairs, truncation=True, max_length=max_seq_length))
    budget = max_seq_length - 2
    head = budget // 4
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]  # long on purpose: cut below
    kept = [row if len(row) <= budget else row[:head] + row[len(row) - (budget - head):] for row in ids]
    encoded = {"input_ids": [[tokenizer.cls_token_id, *row, tokenizer.sep_token_id] for row in kept]}
    encoded["token_type_ids"] = [[0] * len(row) for row in encoded["input_ids"]]
    encoded["attention_mask"] = [[1] * len(row) for row in encoded["input_ids"]]
    return encoded


def encode_dataset(tokenizer, texts: list[str], pairs: list[str] | None = None, labels: np.ndarray | None = None,
                   *, max_seq_length: int, truncation: str = "head", chunk_size: int = 2048) -> TokenRows:
    """`encode_texts` over chunks of texts into `TokenRows`: the tokenizer's per-token objects of a whole file
    never exist at once (IMDb's 25,000 reviews: +0.18 GB instead of +1.2 GB)."""

    def chunks():
        for start in range(0, len(texts), chunk_size):
            stop = start + chunk_size
            encoded = encode_texts(tokenizer, texts[start:stop], pairs[start:stop] if pairs is not None else None,
                                   max_seq_length=max_seq_length, truncation=truncation)
            yield (encoded["input_ids"], encoded.get("token_type_ids"),
                   {} if labels is None else {"labels": labels[start:stop]})

    return TokenRows.from_chunks(chunks())


@torch.no_grad()
def predict_labels(model, tokenizer, texts: list[str], *, pairs: list[str] | None = None,
                   max_seq_length: int = FinetuneConfig.max_seq_length,
                   batch_size: int = 64, truncation: str = "head",
                   device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(predicted label ids, class probabilities) for raw texts or text pairs, in input order.

    Batches are formed from texts of similar length (little padding); results are put back in input order.
    """
    model.eval()
    data = encode_dataset(tokenizer, texts, pairs, max_seq_length=max_seq_length, truncation=truncation)
    order = np.argsort(data.lengths, kind="stable")
    probabilities = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad([data[int(i)] for i in chunk], return_tensors="pt").to(device)
        probabilities[chunk] = torch.softmax(model(**batch).logits.float(), dim=-1).cpu().numpy()
    return probabilities.argmax(-1), probabilities


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune and evaluate on the validation file; skip when the same inputs and config are done.

    The saved model is the one with the best dev `metric_for_best_model` among the evaluations (after each epoch,
    and every `eval_steps`); training stops early after `early_stopping_patience` evaluations without a better one.
    """
    output_dir = Path(config.output_dir)
    model_path = resolve_model(config.model_name_or_path)
    key = run_key(config, model_path, version=3)
    if stage.completed_stage(output_dir, key):
        logger.info("finetune: %s is up to date, skipping", output_dir)
        return stage.read_json(output_dir / "summary.json")

    accelerator = training_accelerator(config)
    set_seed(config.seed)
    read = dict(text_pair_column=config.text_pair_column, label_names=config.label_names)
    train_texts, train_pairs, train_labels = read_task_file(config.train_file, config.text_column, config.label_column, **read)
    dev_texts, dev_pairs, dev_labels = read_task_file(config.validation_file, config.text_column, config.label_column, **read)
    num_labels = len(config.label_names)
    for name, labels in (("train", train_labels), ("validation", dev_labels)):
        if labels.size == 0 or labels.min() < 0 or labels.max() >= num_labels:
            raise ValueError(f"{name} labels must lie in [0, {num_labels}) for label_names={config.label_names}")

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = load_with_task_head(
        AutoModelForSequenceClassification,
        model_path,
        num_labels=num_labels,
        id2label=dict(enumerate(config.label_names)),
        label2id={name: i for i, name in enumerate(config.label_names)},
    )
    if config.freeze_encoder:
        for param in model.base_model.parameters():
            param.requires_grad = False
    train_data = encode_dataset(tokenizer, train_texts, train_pairs, train_labels,
                                max_seq_length=config.max_seq_length, truncation=config.truncation)
    del train_texts, train_pairs
    loader = train_loader(train_data, config, DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8))
    weights = None
    if config.class_weights == "balanced":
        counts = np.bincount(train_labels, minlength=num_labels).astype(np.float64)
        weights = torch.tensor(counts.sum() / (num_labels * np.maximum(counts, 1)), dtype=torch.float32,
                               device=accelerator.device)
    elif config.class_weights is not None:
        raise ValueError(f"unknown class_weights {config.class_weights!r}; choose 'balanced' or None")

    def dev_metrics(model) -> dict[str, Any]:
        predictions, _ = predict_labels(model, tokenizer, dev_texts, pairs=dev_pairs,
                                        max_seq_length=config.max_seq_length, truncation=config.truncation,
                                        batch_size=config.per_device_eval_batch_size, device=accelerator.device)
        return classification_metrics(dev_labels, predictions, num_labels)

    def loss_of(model, batch) -> torch.Tensor:
        labels = batch.pop("labels")
        return torch.nn.functional.cross_entropy(model(**batch).logits.float(), labels, weight=weights)

    return fit(accelerator, model, tokenizer, loader, loss_of=loss_of, dev_metrics=dev_metrics, config=config,
               output_dir=output_dir, key=key, stage_name="finetune",
               summary={"train_examples": len(train_data), "label_names": list(config.label_names)},
               description={"label_names": config.label_names, "text_column": config.text_column,
                            "text_pair_column": config.text_pair_column, "label_column": config.label_column,
                            "truncation": config.truncation})


def finetune_seeds(config: FinetuneConfig, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Fine-tune once per seed (under `output_dir/seed-N`); dev metrics as mean and standard deviation."""
    runs = [finetune(replace(config, seed=seed, output_dir=str(Path(config.output_dir) / f"seed-{seed}")))
            for seed in seeds]
    names = [k for k, v in runs[0].items() if k.startswith("eval_") and isinstance(v, (int, float))]
    summary = {"seeds": list(seeds), "runs": runs}
    for name in names:
        values = np.asarray([r[name] for r in runs], dtype=np.float64)
        summary[f"{name}_mean"] = float(values.mean())
        summary[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    best = max(runs, key=lambda r: r.get(f"eval_{config.metric_for_best_model}", 0.0))
    summary["best_final_dir"] = best["final_dir"]
    return summary
