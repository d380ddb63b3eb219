"""Fine-tuning a pretrained BERT for single-sentence classification (e.g. SST-2 sentiment).

The task data is a labelled file (TSV/CSV with a header, JSONL, or Parquet; optionally gzip-compressed) with a
text column and an integer label column. The loop uses Accelerate (devices, mixed precision), AdamW with no weight
decay on biases and LayerNorm, linear warmup/decay and gradient clipping, as in the BERT paper's fine-tuning recipe.
The result is `output_dir/final/` (save_pretrained model with id2label + tokenizer), `metrics.jsonl` and
`summary.json` with the dev-set metrics of the final model.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

from bert_core import stage
from bert_core.corpus import read_table_file
from bert_core.evaluate import classification_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    model_name_or_path: str  # a save_pretrained directory (e.g. a pretrain stage's final/)
    train_file: str
    validation_file: str
    output_dir: str
    text_column: str = "sentence"
    label_column: str = "label"
    label_names: tuple[str, ...] = ("negative", "positive")
    max_seq_length: int = 128
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    num_train_epochs: int = 3
    max_train_steps: int | None = None  # overrides num_train_epochs when set
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    seed: int = 42


def read_labelled_texts(path: str | Path, text_column: str, label_column: str) -> tuple[list[str], np.ndarray]:
    """Texts and integer labels from a TSV/CSV/JSONL/Parquet file (gzip allowed)."""
    table = read_table_file(path, string_columns=(text_column,))
    for column in (text_column, label_column):
        if column not in table.column_names:
            raise ValueError(f"{path}: no column {column!r} (columns: {table.column_names})")
    texts = [str(t).strip() for t in table.column(text_column).to_pylist()]
    labels = np.asarray(table.column(label_column).to_pylist())
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels in {label_column!r} must be integers, found {labels.dtype}")
    return texts, labels.astype(np.int64)


def _encode(tokenizer, texts: list[str], labels: np.ndarray, max_seq_length: int) -> list[dict[str, Any]]:
    encoded = tokenizer(texts, truncation=True, max_length=max_seq_length)
    return [{**{k: encoded[k][i] for k in encoded}, "labels": int(labels[i])} for i in range(len(texts))]


@torch.no_grad()
def predict_labels(model, tokenizer, texts: list[str], *, max_seq_length: int = 128, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(predicted label ids, class probabilities) for raw texts."""
    model.eval()
    predictions, probabilities = [], []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_seq_length,
                          padding=True, return_tensors="pt").to(device)
        probs = torch.softmax(model(**batch).logits.float(), dim=-1)
        predictions.append(probs.argmax(-1).cpu().numpy())
        probabilities.append(probs.cpu().numpy())
    return np.concatenate(predictions), np.concatenate(probabilities)


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune and evaluate on the validation file; skip when the same inputs and config are done."""
    output_dir = Path(config.output_dir)
    fields = {k: v for k, v in stage.to_jsonable(config).items() if k != "output_dir"}
    key = stage.hash_json({"config": fields, "data": stage.hash_files([config.train_file, config.validation_file]),
                           "model": stage.hash_path(config.model_name_or_path) if Path(config.model_name_or_path).exists() else config.model_name_or_path, "version": 1})
    if stage.completed_stage(output_dir, key):
        logger.info("finetune: %s is up to date, skipping", output_dir)
        return stage.read_json(output_dir / "summary.json")

    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    set_seed(config.seed)
    train_texts, train_labels = read_labelled_texts(config.train_file, config.text_column, config.label_column)
    dev_texts, dev_labels = read_labelled_texts(config.validation_file, config.text_column, config.label_column)
    num_labels = len(config.label_names)
    for name, labels in (("train", train_labels), ("validation", dev_labels)):
        if labels.size == 0 or labels.min() < 0 or labels.max() >= num_labels:
            raise ValueError(f"{name} labels must lie in [0, {num_labels}) for label_names={config.label_names}")

    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        config.model_name_or_path,
        num_labels=num_labels,
        id2label=dict(enumerate(config.label_names)),
        label2id={name: i for i, name in enumerate(config.label_names)},
    )
    train_rows = _encode(tokenizer, train_texts, train_labels, config.max_seq_length)
    loader = torch.utils.data.DataLoader(
        train_rows, batch_size=config.per_device_train_batch_size, shuffle=True,
        collate_fn=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
        generator=torch.Generator().manual_seed(config.seed),
    )
    steps_per_epoch = len(loader)
    max_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(config.warmup_ratio * max_steps),
                              num_training_steps=max_steps)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = output_dir / "metrics.jsonl"
    metrics_path.write_text("")
    step = 0
    epochs = math.ceil(max_steps / steps_per_epoch)
    progress = tqdm(total=max_steps, desc="finetune", unit="step", disable=not accelerator.is_local_main_process)
    history = []
    for epoch in range(epochs):
        model.train()
        running, count = 0.0, 0
        for batch in loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            running += float(loss.detach())
            count += 1
            step += 1
            progress.update(1)
            if step >= max_steps:
                break
        predictions, _ = predict_labels(accelerator.unwrap_model(model), tokenizer, dev_texts,
                                        max_seq_length=config.max_seq_length,
                                        batch_size=config.per_device_eval_batch_size, device=accelerator.device)
        metrics = classification_metrics(dev_labels, predictions, num_labels)
        record = {"step": step, "epoch": epoch + 1, "train_loss": running / max(1, count),
                  **{f"eval_{k}": v for k, v in metrics.items() if k != "confusion_matrix"}}
        history.append(record)
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        progress.set_postfix(dev_acc=f"{metrics['accuracy']:.3f}")
        if step >= max_steps:
            break
    progress.close()

    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        with stage.atomic_directory(output_dir / "final") as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        summary = {
            "final_dir": str(output_dir / "final"),
            "steps": step,
            "train_examples": len(train_texts),
            **{f"eval_{k}": v for k, v in metrics.items()},
            "label_names": list(config.label_names),
        }
        stage.write_json(output_dir / "summary.json", summary)
        stage.write_stage_record(output_dir, key=key, stage="finetune", config=config, outputs=summary)
    accelerator.wait_for_everyone()
    return summary
