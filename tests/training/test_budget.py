"""Budgeted pretraining: a token or seconds budget sets the run's length, and the schedule ends at zero on it."""

import json
import os
from pathlib import Path

import pytest

from bert_core import stage
from bert_core.config import ConfigError
from bert_core.examples.masking import MaskingConfig
from bert_core.examples.shards import ShardDataset
from bert_core.examples.tokenizer import load_tokenizer
from bert_core.training import budget
from bert_core.training.data import PretrainingCollator, epoch_batches
from bert_core.training.pretrain import pretrain
from tests.conftest import kill_after_checkpoint, run_pretrain_cli, tiny_pretrain_config


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _tokens_seen_by_collating(examples_dir: Path, steps: int, batch_size: int, seed: int) -> list[int]:
    """Non-pad tokens per step, counted from the collated batches' attention masks (not from the length column)."""
    data = ShardDataset(examples_dir / "train")
    tokenizer = load_tokenizer(examples_dir / "tokenizer")
    collator = PretrainingCollator(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
                                   pad_token_id=tokenizer.pad_token_id, masking=MaskingConfig())
    counts, epoch = [], 0
    while len(counts) < steps:
        for batch in epoch_batches(len(data), batch_size, seed=seed, epoch=epoch, lengths=data.lengths):
            counts.append(int(collator([data[int(i)] for i in batch])["attention_mask"].sum()))
            if len(counts) == steps:
                break
        epoch += 1
    return counts


def test_a_token_budget_ends_the_run_at_the_budget_with_the_schedule_at_zero(examples_dir, tmp_path):
    budget_tokens = 40_000
    summary = pretrain(tiny_pretrain_config(examples_dir, tmp_path / "run", max_train_steps=100_000,
                                            max_train_tokens=budget_tokens, warmup_fraction=0.1, eval_steps=1000,
                                            checkpointing_steps=1000, logging_steps=1))
    steps = summary["steps"]
    per_step = _tokens_seen_by_collating(examples_dir, steps, 16, seed=7)
    # The run stopped at the first step whose tokens reach the budget, and says how many it trained on.
    assert sum(per_step[:-1]) < budget_tokens <= sum(per_step) == summary["train_tokens"]
    train = [r for r in _records(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    assert train[-1]["learning_rate"] == 0.0  # the decay finished on the last step
    lrs = [r["learning_rate"] for r in train]
    warmup = round(0.1 * steps)
    assert lrs[warmup - 1] == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-3)  # warm-up: 10% of the run
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))
    assert all(r["planned_steps"] == steps for r in train)


def test_budget_settings_are_checked(examples_dir, tmp_path):
    with pytest.raises(ConfigError, match="max_train_tokens is 0"):
        tiny_pretrain_config(examples_dir, tmp_path, max_train_tokens=0)
    with pytest.raises(ConfigError, match="warmup_fraction is 1.0"):
        tiny_pretrain_config(examples_dir, tmp_path, warmup_fraction=1.0)
    with pytest.raises(ValueError, match="'constant_with_warmup' has no length"):
        pretrain(tiny_pretrain_config(examples_dir, tmp_path / "c", lr_scheduler_type="constant_with_warmup",
                                      max_train_tokens=5000))


def test_seconds_budget_steps_count_evaluations_and_never_go_back():
    # 20 steps in 4 s, 0.1 s a step since, a 2 s evaluation every 100 steps: 60 s left fit 500 steps.
    assert budget.steps_for_seconds(64, steps_done=20, elapsed=4, seconds_per_step=0.1, eval_seconds=2, eval_steps=100,
                                    max_steps=10_000) == 520
    assert budget.steps_for_seconds(3, steps_done=20, elapsed=4, seconds_per_step=0.1, eval_seconds=0, eval_steps=100,
                                    max_steps=10_000) == 20
    assert budget.steps_for_seconds(1e6, steps_done=20, elapsed=4, seconds_per_step=0.1, eval_seconds=0,
                                    eval_steps=100, max_steps=300) == 300


def test_token_plan_counts_every_rank_and_accumulation(examples_dir):
    lengths = ShardDataset(examples_dir / "train").lengths
    common = dict(seed=3, length_binning=True)
    one = budget.tokens_through(6, lengths, 8, world_size=1, gradient_accumulation_steps=2, **common)
    batches = epoch_batches(len(lengths), 8, seed=3, epoch=0, lengths=lengths)
    assert one == sum(int(lengths[b].sum()) for b in batches[:12])
    two = budget.tokens_through(3, lengths, 8, world_size=2, gradient_accumulation_steps=2, **common)
    per_rank = [epoch_batches(len(lengths), 8, seed=3, epoch=0, rank=r, world_size=2, lengths=lengths)[:6]
                for r in (0, 1)]
    assert two == sum(int(lengths[b].sum()) for rank in per_rank for b in rank)
    assert budget.steps_for_tokens(two, lengths, 8, world_size=2, gradient_accumulation_steps=2, max_steps=99,
                                   **common) == 3
    assert budget.steps_for_tokens(two + 1, lengths, 8, world_size=2, gradient_accumulation_steps=2, max_steps=99,
                                   **common) == 4
    # Across an epoch boundary: the next epoch's own permutation.
    epochs = [epoch_batches(len(lengths), 64, seed=3, epoch=e, lengths=lengths) for e in (0, 1)]
    crossing = sum(int(lengths[b].sum()) for b in epochs[0]) + sum(int(lengths[b].sum()) for b in epochs[1][:3])
    assert budget.tokens_through(len(epochs[0]) + 3, lengths, 64, world_size=1, gradient_accumulation_steps=1,
                                 **common) == crossing
    assert budget.steps_for_tokens(crossing, lengths, 64, world_size=1, gradient_accumulation_steps=1,
                                   max_steps=10**6, **common) == len(epochs[0]) + 3


def test_a_resumed_seconds_budget_ends_at_the_step_the_first_run_planned(examples_dir, tmp_path):
    """kill -9 a seconds-budgeted run after its plan is stored; the rerun keeps the stored step count rather than
    measuring again (its speed and the time already spent would give another), and ends with the schedule at zero
    on that step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    config = tiny_pretrain_config(examples_dir, tmp_path / "run", max_train_steps=100_000, max_train_seconds=8.0,
                                  num_warmup_steps=5, checkpointing_steps=30, eval_steps=60, logging_steps=10)
    stage.write_json(tmp_path / "run.json", config)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000030"
    kill_after_checkpoint(tmp_path / "run.json", checkpoint, env)
    plan = stage.read_json(checkpoint / "trainer_state.json")["planned_steps"]
    assert plan > 30, f"the plan ({plan} steps) should reach past the kill"

    assert run_pretrain_cli(tmp_path / "run.json", env).wait() == 0
    summary = stage.read_json(tmp_path / "run" / "summary.json")
    assert summary["steps"] == plan
    train = [r for r in _records(tmp_path / "run") if "loss" in r]
    assert train[-1]["step"] == plan and train[-1]["learning_rate"] == 0.0
    planned = [r for r in _records(tmp_path / "run") if "seconds_per_step" in r]
    assert len(planned) == 1 and planned[0]["planned_steps"] == plan  # measured once, before the kill
    assert 0 < summary["train_seconds"]
