"""BERT pretraining (MLM + NSP) with an explicit Hugging Face Accelerate loop, checkpoints and exact resume.

One process per device; `accelerate launch ... -m bert_core pretrain --config run.json` starts them (see
`bert_core.training.launch.launch_command`). The loop is deterministic given the seed: the batch order is a function of (seed, epoch), so a
checkpoint stores (step, epoch, batch_in_epoch) next to Accelerate's model/optimizer/RNG state, and a resumed run
continues with the next unseen batch instead of replaying the epoch. Checkpoints are written under a temporary name
and renamed; the newest `checkpoints_total_limit` are kept; SIGTERM writes one before exiting. The result is
`output_dir/final/`, plain `save_pretrained` output (model + tokenizer) that vanilla transformers loads, plus
`metrics.jsonl` (training and held-out metrics by step) and `summary.json`.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from annotated_types import Ge, Le
from tqdm.auto import tqdm

from bert_core import stage
from bert_core.config import (SEED, MixedPrecision, NonNegativeFloat, NonNegativeInt, OpenFraction, PositiveFloat,
    PositiveInt, SeqLength, check_fields)
from bert_core.examples.masking import MaskingConfig
from bert_core.examples.shards import ShardDataset
from bert_core.examples.tokenizer import continuation_mask, load_tokenizer
from bert_core.metrics import eval_metrics
from bert_core.stage import no_progress_bar as _no_progress_bar
from bert_core.training import budget
from bert_core.training.checkpoints import WINDOW as _WINDOW
from bert_core.training.checkpoints import MetricsLog, find_resume, save_checkpoint, window_metrics
from bert_core.training.data import PretrainingCollator, epoch_batches
from bert_core.training.hardware import ThreadShare, accelerator_precision, run_precision
from bert_core.training.launch import broadcast_flag, check_ranks, end_training, fault_point, fresh_accelerator_state
from bert_core.training.model import (ARCHITECTURES, MODEL_INPUTS, PRESETS, PretrainingObjective, architecture_of,
    build_model, describe_model, evaluate_objective, load_pretraining_model, resolve_model)
from bert_core.training.optim import build_optimizer

logger = logging.getLogger(__name__)

Preset = Literal[tuple(PRESETS)]

# Fields that change how a run is watched or launched but not what it computes: left out of the stage key.
_NOT_IN_KEY = {"output_dir", "resume_from_checkpoint", "logging_steps", "eval_steps", "checkpointing_steps",
               "checkpoints_total_limit", "main_process_port", "mlflow_run_id", "accelerate_config_file", "machine_rank",
               "num_threads"}


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    shards_dir: str  # an examples-stage output: train/, validation/, tokenizer/
    output_dir: str
    preset: Preset = "bert-tiny"  # the size (bert_core.training.model.PRESETS)
    architecture: Literal[ARCHITECTURES] = "bert"  # "bert" or "modernbert" (MLM only: shards written with pair_objective "none")
    max_seq_length: SeqLength | None = None  # the shards'; given, it must be theirs
    per_device_train_batch_size: PositiveInt = 32  # examples per device per optimizer micro-step
    per_device_eval_batch_size: PositiveInt = 64  # examples per device per held-out evaluation step
    gradient_accumulation_steps: PositiveInt = 1  # micro-batches per optimizer step
    learning_rate: NonNegativeFloat = 1e-4  # the peak learning rate, after warm-up
    weight_decay: NonNegativeFloat = 0.01  # AdamW/LAMB weight decay (not on biases and LayerNorm weights)
    adam_beta1: OpenFraction = 0.9
    adam_beta2: OpenFraction = 0.999
    adam_epsilon: PositiveFloat = 1e-6
    max_grad_norm: NonNegativeFloat = 1.0  # gradient clipping by global norm (0: none)
    optimizer: Literal["adamw", "lamb"] = "adamw"  # "adamw" (fused where available) or "lamb" (large global batches, NVIDIA's recipe)
    lr_scheduler_type: str = "linear"  # any transformers scheduler name: "linear", "polynomial", "cosine", ...
    polynomial_power: PositiveFloat = 1.0  # for "polynomial" (NVIDIA's BERT recipe uses 0.5)
    num_warmup_steps: NonNegativeInt = 10000  # linear warm-up steps (warmup_fraction replaces it)
    warmup_fraction: OpenFraction | None = None  # warm-up as a share of the run's steps (Cramming); replaces num_warmup_steps
    max_train_steps: PositiveInt = 1_000_000  # the run's length, or the cap on a budgeted run's
    # Budgets (bert_core.training.budget): the schedule is laid out so the run ends at the budget with the decay finished.
    max_train_tokens: PositiveInt | None = None  # non-pad tokens the optimizer has seen, all ranks
    max_train_seconds: PositiveFloat | None = None  # wall-clock seconds of training, measured on the first steps
    mixed_precision: MixedPrecision = "auto"  # "auto" (bf16 where the hardware has it, else fp32), "no", "bf16", "fp16"
    num_threads: PositiveInt | None = None  # torch threads; None: OMP_NUM_THREADS, else a share of the cores (hardware)
    length_binning: bool = True  # batches of similar-length examples: little of each batch is padding
    init_from: str | None = None  # a pretrained directory to start from, e.g. phase 1's final/ for a phase 2 at 512
    seed: int = SEED
    logging_steps: PositiveInt = 10  # log the training loss every N steps
    eval_steps: PositiveInt = 1000  # held-out MLM (and NSP/SOP) metrics every N steps
    checkpointing_steps: PositiveInt = 1000  # save a resumable checkpoint every N steps
    checkpoints_total_limit: PositiveInt = 3  # keep the newest N checkpoints
    resume_from_checkpoint: str | None = "latest"  # "latest", a checkpoint path, or None to start fresh
    num_processes: PositiveInt = 1  # training processes on this machine (without an Accelerate config file)
    main_process_port: Annotated[int, Ge(1), Le(65535)] = 29500  # the rendezvous port of a multi-process launch
    # An Accelerate config file (see deployments/accelerate/) for GPUs and several machines; it then decides the
    # processes, machines and precision of the launch. machine_rank overrides the file's on each machine.
    accelerate_config_file: str | None = None
    machine_rank: NonNegativeInt | None = None  # this machine's rank in a multi-machine launch
    mlflow_run_id: str | None = None  # log metrics to this MLflow run while training (MLFLOW_TRACKING_URI)
    # Dynamic masking's settings are the examples stage's (ExamplesConfig.mlm, in the shards' manifest); given here,
    # they must equal them.
    mlm: MaskingConfig | None = None

    def __post_init__(self):
        check_fields(self)



def with_shard_settings(config: PretrainConfig) -> PretrainConfig:
    """`config` with what its shards decide filled in: `max_seq_length`, and the masking settings (the examples
    stage's `mlm`, recorded in the train manifest; dynamic masking applies them per batch). A value given in
    `config` that differs from the shards' is an error naming both: one home per setting."""
    path = Path(config.shards_dir) / "train" / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"PretrainConfig.shards_dir {config.shards_dir}: no {path}; expected the output of "
                                f"the examples stage (train/, validation/, tokenizer/)")
    manifest = stage.read_json(path)
    seq, masking = manifest["max_seq_length"], MaskingConfig(**manifest["config"]["mlm"])
    if config.max_seq_length is not None and config.max_seq_length != seq:
        raise ValueError(f"max_seq_length={config.max_seq_length} but the shards in {config.shards_dir} were written "
                         f"with max_seq_length={seq}; leave it empty to use the shards'")
    if config.architecture == "modernbert" and manifest["pair_objective"] != "none":
        raise ValueError(f"architecture 'modernbert' has no next-sentence head, but the shards in {config.shards_dir} "
                         f"were written with pair_objective {manifest['pair_objective']!r}; write them with "
                         f"ExamplesConfig.pair_objective 'none'")
    if config.mlm is not None and config.mlm != masking:
        raise ValueError(f"PretrainConfig.mlm {stage.to_jsonable(config.mlm)} contradicts the masking the shards in "
                         f"{config.shards_dir} were written for ({stage.to_jsonable(masking)}); masking is set in "
                         f"the examples stage (ExamplesConfig.mlm): leave PretrainConfig.mlm empty")
    return replace(config, max_seq_length=seq, mlm=masking)


def stage_key(config: PretrainConfig) -> str:
    config = with_shard_settings(config)
    train_manifest = Path(config.shards_dir) / "train" / "manifest.json"
    fields = {k: v for k, v in stage.to_jsonable(config).items() if k not in _NOT_IN_KEY}
    fields["mixed_precision"] = run_precision(config)  # what runs: the Accelerate file's, or "auto" for this machine
    return stage.hash_json({"config": fields, "train": stage.hash_file(train_manifest), "version": 1})


class _Stop:
    requested = False

    @classmethod
    def handle(cls, signum, frame):  # noqa: ARG003
        cls.requested = True


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Train; return the summary (final metrics, paths). Skips if `final/` of the same key exists."""
    config = with_shard_settings(config)
    output_dir = Path(config.output_dir)
    shards_dir = Path(config.shards_dir)
    key = stage_key(config)
    done = stage.completed_stage(output_dir, key)
    if done:
        logger.info("pretrain: %s is up to date, skipping", output_dir)
        return stage.read_json(output_dir / "summary.json")
    # A directory, models:/ URI or package (the shards bring the tokenizer); a missing one is one clear error, before
    # anything is set up.
    init_path = resolve_model(config.init_from, need_tokenizer=False) if config.init_from else None
    fresh_accelerator_state()
    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                              mixed_precision=accelerator_precision(config))
    set_seed(config.seed)
    train_set = ShardDataset(shards_dir / "train")
    eval_set = ShardDataset(shards_dir / "validation")
    manifest = train_set.manifest
    tokenizer = load_tokenizer(shards_dir / "tokenizer")
    if len(tokenizer) != manifest["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, shards were written for {manifest['vocab_size']}")
    collator = PretrainingCollator(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
                                   pad_token_id=tokenizer.pad_token_id, masking=config.mlm,
                                   is_continuation=continuation_mask(tokenizer) if config.mlm.whole_word_mask else None)

    if init_path:
        model = load_pretraining_model(init_path)
        if architecture_of(model.config) != config.architecture:
            raise ValueError(f"init_from {config.init_from} is a {model.config.model_type} model; this run's "
                             f"architecture is {config.architecture!r}")
        if model.config.vocab_size != len(tokenizer) or model.config.max_position_embeddings < config.max_seq_length:
            raise ValueError(f"init_from {config.init_from}: vocab {model.config.vocab_size} / positions "
                             f"{model.config.max_position_embeddings} do not fit these shards ({len(tokenizer)} tokens, "
                             f"max_seq_length {config.max_seq_length})")
    else:
        model = build_model(config.preset, vocab_size=len(tokenizer), architecture=config.architecture,
                            max_position_embeddings=max(512, config.max_seq_length),
                            special_ids={"pad_token_id": tokenizer.pad_token_id, "cls_token_id": tokenizer.cls_token_id,
                                         "sep_token_id": tokenizer.sep_token_id})
    objective = PretrainingObjective(model)
    threads = ThreadShare(config.num_threads).start()
    try:  # the thread share ends with the run, failed or not (a long-lived worker process outlives it)
        optimizer = build_optimizer(objective, name=config.optimizer, lr=config.learning_rate,
                                    weight_decay=config.weight_decay, betas=(config.adam_beta1, config.adam_beta2),
                                    eps=config.adam_epsilon)
        world, rank = accelerator.num_processes, accelerator.process_index
        # The run's length: max_train_steps, the step a token budget is reached (exact: the batch order is known), or a
        # seconds budget calibrated on the first steps and stored in the checkpoints (state["planned_steps"]).
        length = budget.RunLength(config, optimizer, train_set.lengths, world)
        scheduler = length.schedule.scheduler
        objective, optimizer = accelerator.prepare(objective, optimizer)
        # The scheduler is stepped by hand once per optimizer step (a prepared one steps num_processes times).
        accelerator.register_for_checkpointing(scheduler)

        state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "key": key, **length.initial_state()}
        resume = find_resume(config, key)
        if resume is not None:
            accelerator.load_state(str(resume))
            state = stage.read_json(resume / "trainer_state.json")
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume, state["step"], state["epoch"],
                        state["batch_in_epoch"])
            length.resumed(state)
        log = MetricsLog(output_dir / "metrics.jsonl", state["step"], main=accelerator.is_main_process,
                         mlflow_run_id=config.mlflow_run_id)

        def run_eval() -> dict[str, float]:
            metrics = evaluate_objective(accelerator.unwrap_model(objective), eval_set, collator,
                                         batch_size=config.per_device_eval_batch_size, device=accelerator.device,
                                         autocast=accelerator.autocast)
            return eval_metrics(metrics)

        if state["step"] == 0:
            eval_start = time.perf_counter()
            initial = run_eval()
            state["eval_seconds"] = time.perf_counter() - eval_start
            log({"step": 0, **initial})
            logger.info("step 0 held-out: %s", initial)

        def total_steps() -> int:  # the plan: fixed at the start, or once a seconds budget is calibrated
            return length.total(state)
        previous_handler = signal.signal(signal.SIGTERM, _Stop.handle) if accelerator.is_main_process else None
        specials = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id])  # never masked: not maskable
        progress = tqdm(total=total_steps(), initial=state["step"], disable=_no_progress_bar(accelerator),
                        desc="pretrain", unit="step")
        length.start(state)
        window = dict.fromkeys(_WINDOW, 0.0)
        window_start = time.perf_counter()
        grad_norm = torch.tensor(0.0)
        interrupted = False
        seen = hashlib.sha256()  # the example ids this rank trained on, in order
        seen_ids: list[np.ndarray] = []
        lengths = train_set.lengths if config.length_binning else None
        objective.train()
        with ThreadPoolExecutor(max_workers=1) as loader:
            while state["step"] < total_steps() and not interrupted:
                batches = epoch_batches(len(train_set), config.per_device_train_batch_size, seed=config.seed,
                                        epoch=state["epoch"], rank=rank, world_size=world, lengths=lengths)

                def collate(batch_index: int, epoch: int = state["epoch"], batches: list = batches):
                    start = time.perf_counter()
                    items = [train_set[int(i)] for i in batches[batch_index]]
                    # Dynamic masks are a function of (seed, epoch, batch, rank): the same after a resume.
                    batch = collator(items, np.random.default_rng([config.seed, epoch, batch_index, rank]))
                    return batch, time.perf_counter() - start

                # The next batch is collated in a thread while this one computes (torch releases the GIL).
                pending = loader.submit(collate, state["batch_in_epoch"]) if state["batch_in_epoch"] < len(batches) else None
                for batch_index in range(state["batch_in_epoch"], len(batches)):
                    wait_start = time.perf_counter()
                    cpu_batch, collate_seconds = pending.result()
                    window["loader_seconds"] += time.perf_counter() - wait_start
                    window["collate_seconds"] += collate_seconds
                    pending = loader.submit(collate, batch_index + 1) if batch_index + 1 < len(batches) else None
                    ids = batches[batch_index]
                    seen.update(np.asarray(ids, dtype=np.int64).tobytes())
                    if len(seen_ids) < 4096:
                        seen_ids.append(ids)
                    batch = {k: v.to(accelerator.device) for k, v in cpu_batch.items()}
                    with accelerator.accumulate(objective):
                        out = objective(**batch)
                        accelerator.backward(out["loss"])
                        if accelerator.sync_gradients:
                            grad_norm = accelerator.clip_grad_norm_(objective.parameters(), config.max_grad_norm)
                        optimizer.step()
                        if accelerator.sync_gradients:
                            scheduler.step()
                        optimizer.zero_grad()
                    for name in ("loss", "mlm_loss", "nsp_loss"):
                        window[name] += float(out[name].detach())
                    for name in ("mlm_correct", "mlm_count", "nsp_correct", "nsp_count"):
                        window[name] += int(out[name])
                    window["tokens"] += int(batch["attention_mask"].sum())
                    window["specials"] += int(torch.isin(cpu_batch["input_ids"], specials).sum())
                    window["positions"] += batch["attention_mask"].numel()
                    window["micro"] += 1
                    if not accelerator.sync_gradients:
                        continue
                    state["step"] += 1
                    state["batch_in_epoch"] = batch_index + 1
                    progress.update(1)
                    step = state["step"]
                    fault_point(f"step-{step}", rank)
                    plan = length.stepped(state, accelerator)
                    if plan is not None:
                        log(plan)
                        progress.total = plan["planned_steps"]
                        progress.refresh()
                    if step % config.logging_steps == 0 or step == total_steps():
                        totals = dict(zip(_WINDOW, accelerator.reduce(torch.tensor(
                            [window[k] for k in _WINDOW], dtype=torch.float64, device=accelerator.device),
                            reduction="sum").tolist()))
                        record = {"step": step, **window_metrics(totals, time.perf_counter() - window_start, world),
                                  "learning_rate": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                                  **length.progress(state)}
                        log(record)
                        threads.rebalance()  # another training run may have started or ended on this machine
                        if accelerator.is_main_process:
                            logger.info("step %d/%d loss %.4f mlm_loss %.4f nsp_loss %.4f mlm_accuracy %.3f lr %.2e "
                                        "%.0f tokens/s", step, total_steps(), record["loss"], record["mlm_loss"],
                                        record["nsp_loss"], record["mlm_accuracy"], record["learning_rate"],
                                        record["tokens_per_second"])
                        progress.set_postfix(loss=f"{record['loss']:.3f}", mlm_acc=f"{record['mlm_accuracy']:.3f}")
                        window = dict.fromkeys(_WINDOW, 0.0)
                        window_start = time.perf_counter()
                    if step % config.eval_steps == 0 and step != total_steps():
                        held_out = run_eval()
                        log({"step": step, **held_out})
                        if accelerator.is_main_process:
                            logger.info("step %d held-out mlm_loss %.4f mlm_accuracy %.3f nsp_accuracy %.3f", step,
                                        held_out["eval_mlm_loss"], held_out["eval_mlm_accuracy"],
                                        held_out["eval_nsp_accuracy"])
                    stop_now = broadcast_flag(accelerator, _Stop.requested)
                    if step % config.checkpointing_steps == 0 or stop_now or step == total_steps():
                        save_checkpoint(accelerator, output_dir, {**state, "train_seconds": length.seconds(state)},
                                        config.checkpoints_total_limit)
                    if stop_now:
                        logger.warning("SIGTERM: checkpoint written at step %d, stopping", step)
                        interrupted = True
                        break
                    if step >= total_steps():
                        break
                else:
                    state["epoch"] += 1
                    state["batch_in_epoch"] = 0
                if pending is not None:
                    pending.cancel()
        progress.close()
    finally:
        threads.stop()
    state["train_seconds"] = length.seconds(state)
    if previous_handler is not None:
        signal.signal(signal.SIGTERM, previous_handler)
    if interrupted:
        return {"interrupted": True, "step": state["step"]}

    final_metrics = run_eval()
    log({"step": state["step"], **final_metrics})
    ranks = check_ranks(accelerator, objective, seen.hexdigest(), seen_ids)
    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        stage.write_json(output_dir / "ranks.json", ranks)
        with stage.atomic_directory(output_dir / "final") as tmp:
            accelerator.unwrap_model(objective).model.save_pretrained(tmp)
            tokenizer.model_input_names = MODEL_INPUTS[config.architecture]  # ModernBERT takes no token types
            tokenizer.save_pretrained(tmp)
            describe_model(tmp, kind="pretrained", preset=config.preset, architecture=config.architecture,
                           max_seq_length=config.max_seq_length,
                           tokenizer_sha256=manifest["tokenizer_hash"], pair_objective=manifest["pair_objective"],
                           shards_dir=config.shards_dir, stage_key=key, mixed_precision=accelerator.mixed_precision)
        history = log.history()
        initial = next(r for r in history if r["step"] == 0 and "eval_mlm_loss" in r)
        summary = {
            "final_dir": str(output_dir / "final"),
            "steps": state["step"],
            "train_tokens": length.tokens(state["step"]),
            "train_seconds": state["train_seconds"],
            "preset": config.preset,
            "mixed_precision": accelerator.mixed_precision,
            "initial_eval_mlm_loss": initial["eval_mlm_loss"],
            **final_metrics,
            "train_loss": next(r["loss"] for r in reversed(history) if "loss" in r),
        }
        stage.write_json(output_dir / "summary.json", summary)
        stage.write_stage_record(output_dir, key=key, stage="pretrain", config=config, outputs=summary)
    accelerator.wait_for_everyone()
    end_training(accelerator)
    return summary

