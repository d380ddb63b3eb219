"""Prefect task for pretraining: writes the config JSON and runs `accelerate launch -m bert_core pretrain`.

Training runs in a subprocess (one process per device) rather than inside the task, because Accelerate's
launchers must own their processes; its log lines are streamed into the task's log and its progress into a Prefect
progress artifact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from bert_core import stage, tracking
from bert_core.training import launch
from bert_core.training import pretrain as pretrain_lib
from bert_core.training.model import model_name
from tasks import TRAINING_TAG

logger = logging.getLogger(__name__)
# How long a launch may take to exit once its run is saved: ranks end their own teardown after
# launch.TEARDOWN_SECONDS; this covers the launcher around them.
TEARDOWN_GRACE_SECONDS = 2 * launch.TEARDOWN_SECONDS + 30



class _Progress:
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


def _descendants(pid: int) -> list[int]:
    """The processes below `pid`, deepest first (Linux /proc; elsewhere none)."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            for child in map(int, children.read_text().split()):
                found += _descendants(child) + [child]
        except (OSError, ValueError):
            continue
    return found


def run_launch(command: list[str], env: dict, on_line, saved, grace_seconds: float = TEARDOWN_GRACE_SECONDS,
               log: logging.Logger | logging.LoggerAdapter = logger) -> int:
    """Run a training launch, handing each output line to `on_line`; its exit code. A launch whose run is saved
    (`saved()` true) but that has not exited `grace_seconds` later, a hang in the distributed runtime's teardown,
    is killed with its processes and counts as finished (0): it must not hold the worker (or a test) for good."""
    lines: queue.Queue[str | None] = queue.Queue()
    # Not a `with` block: closing the pipe would wait for a reader blocked on a leftover process that holds it.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               bufsize=1)

    def read() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, name="launch-output", daemon=True).start()
    saved_at = exited_at = None
    while True:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            line = ""
        if line is None:
            break
        if line.strip():
            on_line(line.rstrip())
        now = time.monotonic()
        if process.poll() is not None:
            exited_at = exited_at or now
            if now - exited_at > 5 and lines.empty():  # a leftover process holds the pipe: stop reading
                break
        elif saved_at is None and saved():
            saved_at = now
        elif saved_at is not None and now - saved_at > grace_seconds:
            log.warning("the run is saved but its launch has not exited %.0f s later (a teardown hang); ending "
                        "its processes", grace_seconds)
            for pid in _descendants(process.pid) + [process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
            return 0
    return process.wait()


class TrainingProcessFailed(RuntimeError):
    """A launched training process exited with an error: a lost rank or machine, a killed process. The task retries
    once; the rerun resumes from the last complete checkpoint (a torn one is never resumed from)."""


def _lost_process(task, task_run, state) -> bool:  # noqa: ARG001 (Prefect's retry_condition_fn signature)
    """Retry a failed launch, not a run that never started (bad config or shards: the same error again)."""
    try:
        state.result()
    except TrainingProcessFailed:
        return True
    except BaseException:
        return False
    return False


@task(name="pretrain", cache_policy=NO_CACHE, tags=[TRAINING_TAG], retries=1, retry_condition_fn=_lost_process)
def pretrain(config: pretrain_lib.PretrainConfig, mlflow_parent_run_id: str | None = None) -> dict:
    """Run (or resume, or skip when up to date) pretraining; its MLflow run nests under `mlflow_parent_run_id`."""
    logger = get_run_logger()
    config = pretrain_lib.with_shard_settings(config)  # the run's MLflow params show the masking actually used
    output_dir = Path(config.output_dir)
    if stage.completed_stage(output_dir, pretrain_lib.stage_key(config)):
        logger.info("pretrain: %s is up to date, skipping", output_dir)
        run_file = output_dir / "mlflow_run.json"
        run_id = stage.read_json(run_file)["run_id"] if run_file.is_file() else None
        return {**stage.read_json(output_dir / "summary.json"), "mlflow_run_id": run_id, "reused": True}
    # Training logs its metrics to an MLflow run as it goes; a resumed run continues the same MLflow run.
    run_file = output_dir / "mlflow_run.json"
    key = pretrain_lib.stage_key(config)
    record = stage.read_json(run_file) if run_file.is_file() else {}
    # A resumed run goes on logging into its own MLflow run; a run of another config gets a new one.
    run_id = record.get("run_id") if record.get("key") == key else None
    if run_id is None or not tracking.run_exists(run_id):
        run_id = tracking.start_run("bertflow", f"pretrain-{model_name(config.preset, config.architecture)}",
                                    params={k: v for k, v in stage.to_jsonable(config).items() if k != "mlflow_run_id"},
                                    parent_run_id=mlflow_parent_run_id, tags={"bertflow.stage": "pretrain"})
        stage.write_json(run_file, {"run_id": run_id, "key": key})
    config = replace(config, mlflow_run_id=run_id)
    config_path = output_dir / "pretrain_config.json"
    stage.write_json(config_path, config)
    command = launch.launch_command(config_path, config)
    env = launch.launch_env(config)
    env["TQDM_DISABLE"] = "1"  # progress goes to the artifact below; keep the logs readable
    logger.info("launching: %s", " ".join(command))
    progress_id = create_progress_artifact(progress=0.0, key="pretrain-progress", description="Pretraining steps")
    progress = _Progress(output_dir / "metrics.jsonl", config.max_train_steps)  # a budget's plan: from the records
    tail: deque[str] = deque(maxlen=40)

    def on_line(line: str) -> None:
        tail.append(line)
        logger.info(line)
        percent = progress.percent()
        if percent is not None:
            update_progress_artifact(progress_id, progress=percent, description=progress.description())

    returncode = run_launch(command, env, on_line, saved=lambda: stage.completed_stage(output_dir, key), log=logger)
    if returncode != 0:
        raise TrainingProcessFailed(f"pretraining exited with code {returncode}; last lines:\n" + "\n".join(tail))
    summary_path = output_dir / "summary.json"
    if not summary_path.is_file():
        raise RuntimeError(f"pretraining stopped before the end (interrupted?); no {summary_path}")
    update_progress_artifact(progress_id, progress=100.0)
    summary = stage.read_json(summary_path)
    tracking.tag_run(run_id, {tracking.PRECISION_TAG: summary["mixed_precision"]})  # what "auto" ran in here
    return {**summary, "mlflow_run_id": run_id, "reused": False}
