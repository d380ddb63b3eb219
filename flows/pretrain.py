"""Flow: pretrain BERT (MLM + NSP) on example shards with Accelerate, in a subprocess per device."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from bert_core.stage import default_work_dir
from bert_core.training.model import model_name
from bert_core.training.pretrain import PretrainConfig
from flows.parameters import Architecture, LearningRate, MixedPrecision, NonNegativeInt, PositiveInt, Preset, SeqLength
from tasks.pretrain import pretrain


@flow(name="pretrain")
def pretrain_flow(
    shards_dir: str,
    work_dir: str | None = None,
    preset: Preset = PretrainConfig.preset,
    architecture: Architecture = PretrainConfig.architecture,
    max_seq_length: SeqLength | None = PretrainConfig.max_seq_length,
    per_device_train_batch_size: PositiveInt = PretrainConfig.per_device_train_batch_size,
    gradient_accumulation_steps: PositiveInt = PretrainConfig.gradient_accumulation_steps,
    learning_rate: LearningRate = PretrainConfig.learning_rate,
    optimizer: Literal["adamw", "lamb"] = PretrainConfig.optimizer,
    lr_scheduler_type: str = PretrainConfig.lr_scheduler_type,
    num_warmup_steps: NonNegativeInt = PretrainConfig.num_warmup_steps,
    warmup_fraction: float | None = PretrainConfig.warmup_fraction,
    max_train_steps: PositiveInt = PretrainConfig.max_train_steps,
    max_train_tokens: PositiveInt | None = PretrainConfig.max_train_tokens,
    max_train_seconds: float | None = PretrainConfig.max_train_seconds,
    mixed_precision: MixedPrecision = PretrainConfig.mixed_precision,
    num_threads: PositiveInt | None = PretrainConfig.num_threads,
    eval_steps: PositiveInt = PretrainConfig.eval_steps,
    checkpointing_steps: PositiveInt = PretrainConfig.checkpointing_steps,
    resume_from_checkpoint: str | None = PretrainConfig.resume_from_checkpoint,
    num_processes: PositiveInt = PretrainConfig.num_processes,
    accelerate_config_file: str | None = PretrainConfig.accelerate_config_file,
    init_from: str | None = PretrainConfig.init_from,
    seed: int = PretrainConfig.seed,
    mlflow_parent_run_id: str | None = None,
) -> dict:
    """Returns the training summary (final/ path, held-out metrics at step 0 and at the end, the MLflow run).

    `architecture`: "bert", or "modernbert" (pre-LayerNorm, RoPE, GeGLU; MLM only, so its shards are written with
    pair_objective "none"). `optimizer`: "adamw" or "lamb"; `init_from`: a previous phase's final/ directory (phase 2 at 512);
    `max_seq_length`: empty, the shards' (given, it must be theirs); masking is the shards' (set in examples).
    `max_train_tokens` / `max_train_seconds`: a budget; the schedule (warm-up, then decay to zero) is laid out over
    it and the run ends on it (`max_train_steps` is then only a cap). `warmup_fraction`: warm-up as a share of the
    run, in place of `num_warmup_steps`. `mixed_precision` "auto": bf16 where the device has bf16 units (CUDA, or a
    CPU with AMX / AVX512-BF16 on which bf16 measures faster), else fp32. `num_threads`: torch threads per process;
    empty: OMP_NUM_THREADS, else an even share of the cores among the bertflow training processes on the machine.
    """
    config = PretrainConfig(
        shards_dir=shards_dir,
        output_dir=str(default_work_dir(work_dir) / "pretrain" / model_name(preset, architecture)),
        preset=preset,
        architecture=architecture,
        max_seq_length=max_seq_length,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        optimizer=optimizer,
        lr_scheduler_type=lr_scheduler_type,
        num_warmup_steps=num_warmup_steps,
        warmup_fraction=warmup_fraction,
        max_train_steps=max_train_steps,
        max_train_tokens=max_train_tokens,
        max_train_seconds=max_train_seconds,
        mixed_precision=mixed_precision,
        num_threads=num_threads,
        eval_steps=eval_steps,
        checkpointing_steps=checkpointing_steps,
        resume_from_checkpoint=resume_from_checkpoint,
        num_processes=num_processes,
        accelerate_config_file=accelerate_config_file,
        init_from=init_from,
        seed=seed,
    )
    return pretrain(config, mlflow_parent_run_id)
