"""Training budgets: a run's length in training tokens or wall-clock seconds, and a schedule laid out against it.

Cramming (Geiping & Goldstein, 2022) trains "for a day" with the learning-rate schedule stretched over the budget,
so the run ends with the schedule finished (decayed to zero) instead of being cut off mid-decay. Here:

- `max_train_tokens` counts the non-pad tokens the optimizer has seen (all ranks). The batch order is a function
  of (seed, epoch, rank) and every example's length is in the shards, so the step at which the budget is reached is
  computed exactly before the first step (`steps_for_tokens`), and so is the token count of any step
  (`tokens_through`).
- `max_train_seconds` is turned into a step count once, from the measured speed of the first
  `CALIBRATION_STEPS` optimizer steps and the measured time of one held-out evaluation (the run evaluates every
  `eval_steps`); the result is stored in the run's checkpoints, so a resumed run ends where the uninterrupted one
  would have, however fast the machine it resumes on.

`PlannedSchedule` is transformers' scheduler of the chosen name with `num_training_steps` (and a warm-up given
as a share of the run) replaced when the plan is known.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from transformers import get_scheduler

from bert_core.training.data import epoch_batches

logger = logging.getLogger(__name__)

CALIBRATION_STEPS = 20  # optimizer steps timed before a seconds budget becomes a step count


def _micro_batch_tokens(lengths: np.ndarray, batch_size: int, *, seed: int, world_size: int,
                        length_binning: bool) -> Iterator[np.ndarray]:
    """Per epoch, the non-pad tokens of each global micro-batch (all ranks), in training order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    epoch = 0
    while True:
        total = None
        for rank in range(world_size):
            batches = epoch_batches(len(lengths), batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                                    lengths=lengths if length_binning else None)
            tokens = lengths[np.stack(batches)].sum(axis=1)
            total = tokens if total is None else total + tokens
        yield total
        epoch += 1


def steps_for_tokens(max_train_tokens: int, lengths: np.ndarray, batch_size: int, *, seed: int, world_size: int,
                     gradient_accumulation_steps: int, length_binning: bool, max_steps: int) -> int:
    """The first optimizer step after which at least `max_train_tokens` tokens have been trained on (at most
    `max_steps`)."""
    seen = micro = 0
    for tokens in _micro_batch_tokens(lengths, batch_size, seed=seed, world_size=world_size,
                                      length_binning=length_binning):
        cumulative = seen + np.cumsum(tokens)
        reached = int(np.searchsorted(cumulative, max_train_tokens))  # first micro-batch index reaching it
        if reached < len(tokens):
            return min(max_steps, math.ceil((micro + reached + 1) / gradient_accumulation_steps))
        seen, micro = int(cumulative[-1]), micro + len(tokens)
        if micro >= max_steps * gradient_accumulation_steps:
            return max_steps
    raise AssertionError("unreachable")


def tokens_through(steps: int, lengths: np.ndarray, batch_size: int, *, seed: int, world_size: int,
                   gradient_accumulation_steps: int, length_binning: bool) -> int:
    """Non-pad tokens trained on in the first `steps` optimizer steps (all ranks)."""
    remaining, seen = steps * gradient_accumulation_steps, 0
    for tokens in _micro_batch_tokens(lengths, batch_size, seed=seed, world_size=world_size,
                                      length_binning=length_binning):
        take = min(remaining, len(tokens))
        seen += int(tokens[:take].sum())
        remaining -= take
        if remaining == 0:
            return seen
    raise AssertionError("unreachable")


def steps_for_seconds(max_train_seconds: float, *, steps_done: int, elapsed: float, seconds_per_step: float,
                      eval_seconds: float, eval_steps: int, max_steps: int) -> int:
    """Steps that fit `max_train_seconds`, given `steps_done` steps in `elapsed` seconds, the speed since, and one
    held-out evaluation's time every `eval_steps` steps; never fewer than the steps already done."""
    left = max(0.0, max_train_seconds - elapsed)
    per_step = seconds_per_step + eval_seconds / eval_steps
    return max(steps_done, min(max_steps, steps_done + int(left / max(per_step, 1e-9) + 1e-9)))


class PlannedSchedule:
    """A transformers learning-rate schedule whose length (and warm-up share) can be set once the plan is known."""

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, *, num_warmup_steps: int,
                 warmup_fraction: float | None, total_steps: int, power: float):
        self.warmup_steps, self.warmup_fraction = num_warmup_steps, warmup_fraction
        self.scheduler = get_scheduler(name, optimizer, num_warmup_steps=self._warmup(total_steps),
                                       num_training_steps=total_steps,
                                       scheduler_specific_kwargs={"power": power} if name == "polynomial" else None)
        if not all(isinstance(f, partial) and "num_training_steps" in f.keywords for f in self.scheduler.lr_lambdas):
            raise ValueError(f"lr_scheduler_type {name!r} has no length; a budgeted run needs one that decays over "
                             f"the run, e.g. 'linear', 'cosine' or 'polynomial'")
        self.total_steps = total_steps

    def _warmup(self, total_steps: int) -> int:
        if self.warmup_fraction is None:
            return self.warmup_steps
        return round(self.warmup_fraction * total_steps)

    def set_total(self, total_steps: int) -> None:
        """Lay the schedule out over `total_steps`; the current step's learning rate follows at once."""
        if total_steps == self.total_steps:
            return
        self.total_steps = total_steps
        changes = {"num_training_steps": total_steps, "num_warmup_steps": self._warmup(total_steps)}
        self.scheduler.lr_lambdas = [partial(f.func, *f.args, **{**f.keywords, **changes})
                                     for f in self.scheduler.lr_lambdas]
        self.scheduler.last_epoch -= 1
        self.scheduler.step()  # recomputes the optimizer's learning rate from the new lambdas at the same step


class RunLength:
    """A pretraining run's length in optimizer steps and its schedule: `max_train_steps`, the step a token budget
    is reached, or a seconds budget calibrated on the first steps of the run. The plan and the training time so far
    live in the loop's `state` (checkpointed with it): `planned_steps`, `train_seconds`, `eval_seconds`."""

    def __init__(self, config: Any, optimizer: torch.optim.Optimizer, lengths: np.ndarray, world_size: int):
        self.config = config
        self.token_plan = dict(lengths=lengths, batch_size=config.per_device_train_batch_size, seed=config.seed,
                               world_size=world_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
                               length_binning=config.length_binning)
        self.provisional = config.max_train_steps
        if config.max_train_tokens is not None:
            self.provisional = steps_for_tokens(config.max_train_tokens, max_steps=config.max_train_steps,
                                                **self.token_plan)
        self.calibrate = config.max_train_seconds is not None and self.provisional > CALIBRATION_STEPS
        self.schedule = PlannedSchedule(config.lr_scheduler_type, optimizer, num_warmup_steps=config.num_warmup_steps,
                                        warmup_fraction=config.warmup_fraction, total_steps=self.provisional,
                                        power=config.polynomial_power)
        self.seconds_per_step: float | None = None

    def initial_state(self) -> dict[str, Any]:
        return {"planned_steps": None if self.calibrate else self.provisional, "train_seconds": 0.0,
                "eval_seconds": None}

    def resumed(self, state: dict[str, Any]) -> None:
        if state["planned_steps"] is not None:
            self.schedule.set_total(state["planned_steps"])  # the stored plan: the run ends where it would have

    def total(self, state: dict[str, Any]) -> int:
        return state["planned_steps"] or self.provisional

    def start(self, state: dict[str, Any]) -> None:
        """Called when this process's training loop starts (fresh or resumed)."""
        self.segment_start, self.segment_first_step, self.first_step_done = time.perf_counter(), state["step"], None

    def seconds(self, state: dict[str, Any]) -> float:
        """Training seconds so far, earlier processes of a resumed run included."""
        return state["train_seconds"] + time.perf_counter() - self.segment_start

    def stepped(self, state: dict[str, Any], accelerator: Any) -> dict[str, Any] | None:
        """After each optimizer step: time it; when a seconds budget is due, fix the plan and return its record."""
        now, step = time.perf_counter(), state["step"]
        if self.first_step_done is None:
            self.first_step_done = now  # a process's first step pays for warm-up: not timed
        elif step > self.segment_first_step + 1:
            self.seconds_per_step = (now - self.first_step_done) / (step - self.segment_first_step - 1)
        if state["planned_steps"] is not None or step - self.segment_first_step <= CALIBRATION_STEPS:
            return None
        # Every rank plans from the same (mean) timings, so all stop at the same step.
        per_step, elapsed = accelerator.reduce(torch.tensor([self.seconds_per_step, now - self.segment_start],
                                                            dtype=torch.float64, device=accelerator.device),
                                               reduction="mean").tolist()
        state["planned_steps"] = steps_for_seconds(
            self.config.max_train_seconds, steps_done=step, elapsed=state["train_seconds"] + elapsed,
            seconds_per_step=per_step, eval_seconds=state["eval_seconds"] or 0.0, eval_steps=self.config.eval_steps,
            max_steps=self.provisional)
        self.schedule.set_total(state["planned_steps"])
        if accelerator.is_main_process:
            logger.info("max_train_seconds %.0f: %.3f s/step over %d steps; the run is %d steps",
                        self.config.max_train_seconds, per_step, step - self.segment_first_step - 1,
                        state["planned_steps"])
        return {"step": step, "planned_steps": state["planned_steps"], "seconds_per_step": per_step}

    def progress(self, state: dict[str, Any]) -> dict[str, Any]:
        """The plan and the time left, for a training record."""
        record: dict[str, Any] = {"planned_steps": self.total(state)}
        if self.seconds_per_step is not None:
            record["eta_seconds"] = (self.total(state) - state["step"]) * self.seconds_per_step
        return record

    def tokens(self, steps: int) -> int:
        return tokens_through(steps, **self.token_plan)
