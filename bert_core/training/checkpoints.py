"""Pretraining checkpoints: written under a temporary name and renamed, the newest kept, found again to resume; and the
figures of a logging window (`window_metrics`).

A checkpoint is Accelerate's model/optimizer/RNG state of every rank plus `trainer_state.json` (step, epoch,
batch_in_epoch and the stage key of the run that wrote it); a run resumes only from its own key's checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from bert_core import stage
from bert_core.training.launch import fault_point

logger = logging.getLogger(__name__)


def list_checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def find_resume(config: Any, key: str) -> Path | None:
    if not config.resume_from_checkpoint:
        return None
    if config.resume_from_checkpoint != "latest":
        path = Path(config.resume_from_checkpoint)
        state = stage.read_json(path / "trainer_state.json")
        if state["key"] != key:
            raise ValueError(f"checkpoint {path} was written by a run with another config or data; cannot resume it")
        return path
    for path in reversed(list_checkpoints(Path(config.output_dir))):
        state_file = path / "trainer_state.json"
        if state_file.is_file() and stage.read_json(state_file)["key"] == key:
            return path
        logger.warning("ignoring checkpoint %s: it belongs to another config or data", path)
    return None


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the resumed step, so a resumed run's log has no duplicate or orphan steps."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    if step == 0:
        lines = []
    path.write_text("".join(line + "\n" for line in lines))


class MetricsLog:
    """The run's `metrics.jsonl` (one JSON record per line, each with its `step`), written by the main process and
    mirrored to an MLflow run when one is given; a resumed run's file is first cut back to its step."""

    def __init__(self, path: Path, step: int, *, main: bool, mlflow_run_id: str | None):
        self.path, self.main, self.tracker = path, main, None
        if main:
            path.parent.mkdir(parents=True, exist_ok=True)
            truncate_metrics(path, step)
            if mlflow_run_id:
                from bert_core.tracking import RunMetrics  # only here: importing mlflow costs a CLI run seconds

                self.tracker = RunMetrics(mlflow_run_id)

    def __call__(self, record: dict[str, Any]) -> None:
        if self.main:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.tracker is not None:
                self.tracker.log(record)

    def history(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict, keep: int) -> None:
    """Every rank's state into a temporary directory, then the main process stamps it (trainer_state.json) and
    renames it into place: a checkpoint a process died writing is never found by `find_resume`."""
    root = output_dir / "checkpoints"
    final = root / f"step-{state['step']:07d}"
    tmp = root / f".step-{state['step']:07d}.tmp"
    point, rank = f"checkpoint-{state['step']}", accelerator.process_index
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)  # before any rank writes its RNG state into it
    accelerator.wait_for_everyone()
    fault_point(f"{point}-created", rank)
    accelerator.save_state(str(tmp))
    fault_point(f"{point}-saved", rank)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        stage.write_json(tmp / "trainer_state.json", state)
        fault_point(f"{point}-stamped", rank)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# What the training loop sums over a logging window (on every rank, then reduced): the inputs of `window_metrics`.
WINDOW = ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "mlm_count", "nsp_correct", "nsp_count", "tokens", "specials",
          "positions", "micro", "loader_seconds", "collate_seconds")


def window_metrics(totals: dict[str, float], elapsed: float, world: int) -> dict[str, float]:
    """The logged figures of one pretraining logging window from its `WINDOW` sums over all ranks."""
    micro, elapsed = max(1.0, totals["micro"]), max(elapsed, 1e-9)
    return {
        "loss": totals["loss"] / micro,
        "mlm_loss": totals["mlm_loss"] / micro,
        "nsp_loss": totals["nsp_loss"] / micro,
        "mlm_accuracy": totals["mlm_correct"] / max(1.0, totals["mlm_count"]),
        "nsp_accuracy": totals["nsp_correct"] / max(1.0, totals["nsp_count"]),
        "tokens_per_second": totals["tokens"] / elapsed,
        "padding_share": 1 - totals["tokens"] / max(1.0, totals["positions"]),
        # What the batches trained on: ~mlm_probability under static and dynamic masking alike.
        "masked_share": totals["mlm_count"] / max(1.0, totals["tokens"] - totals["specials"]),
        # Time the step waited for its batch, and the time collating took in the loader thread (overlapped with
        # compute, but it still takes a share of the cores).
        "loader_share": totals["loader_seconds"] / world / elapsed,
        "collate_share": totals["collate_seconds"] / world / elapsed,
    }


class MetricsProgress:
    """Training progress from the run's `metrics.jsonl` (one JSON record per logging step, with its `step`), read as
    it grows: a structured channel, where a log line's wording may change. A budgeted run's records carry its
    planned length (`planned_steps`) and `eta_seconds`, which the artifact's description shows."""

    def __init__(self, path: Path, total_steps: int):
        self.path, self.total, self.offset, self.step = path, total_steps, 0, -1
        self.eta: float | None = None

    def percent(self) -> float | None:
        """The progress when it moved since the last call, else None."""
        if not self.path.is_file():
            return None
        if self.path.stat().st_size < self.offset:  # a resumed run rewrote the file from its checkpoint
            self.offset = 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self.offset += len(complete)
        records = [json.loads(line) for line in complete.splitlines() if line.strip()]
        for record in records:
            self.total = record.get("planned_steps", self.total)
            self.eta = record.get("eta_seconds", self.eta)
        if not records or max(r["step"] for r in records) == self.step:
            return None
        self.step = max(r["step"] for r in records)
        return 100.0 * self.step / max(1, self.total)

    def description(self) -> str:
        eta = "" if self.eta is None else f", about {self.eta / 60:.1f} min left"
        return f"Pretraining: step {max(self.step, 0)} of {self.total}{eta}"
