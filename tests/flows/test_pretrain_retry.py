"""The Prefect pretrain task survives a lost rank: the launch fails, the task's retry resumes from the last complete
checkpoint, and the run ends with the weights of one that was never interrupted."""

from pathlib import Path

import torch
from prefect import flow
from safetensors.torch import load_file

from bert_core.training.launch import FAULT_ENV
from tasks.pretrain import pretrain as pretrain_task
from tests.conftest import tiny_pretrain_config

COMMON = dict(max_train_steps=12, logging_steps=3, eval_steps=100, checkpointing_steps=6, learning_rate=5e-4,
              per_device_train_batch_size=8, mixed_precision="no", num_processes=2)


@flow
def pretrain_once(config) -> dict:
    return pretrain_task(config)


def test_the_pretrain_task_retries_a_lost_rank_from_its_last_checkpoint(examples_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    straight = pretrain_once(tiny_pretrain_config(examples_dir, tmp_path / "straight", main_process_port=29551,
                                                  **COMMON))
    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_ENV, f"1:step-9:{marker}")  # rank 1 dies after step 9, once (checkpoints at 6 and 12)
    lost = pretrain_once(tiny_pretrain_config(examples_dir, tmp_path / "lost", main_process_port=29553, **COMMON))
    assert marker.is_file() and not lost["reused"] and lost["steps"] == straight["steps"] == 12
    a = load_file(str(Path(straight["final_dir"]) / "model.safetensors"))
    b = load_file(str(Path(lost["final_dir"]) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    # Resumed, not started over: step 6's checkpoint is the one written before the rank was lost.
    kept = Path(lost["final_dir"]).parent / "checkpoints" / "step-0000006"
    assert kept.stat().st_mtime < float(marker.read_text())


def test_a_launch_that_hangs_after_its_run_is_saved_is_ended(tmp_path):
    """A launcher (and its rank) stuck in teardown after the run is saved is killed after the grace time and counts
    as finished; a leftover process that keeps the output pipe open does not hold the task either."""
    import os
    import sys
    import time

    from bert_core.training.launch import run_launch

    saved, child_pid = tmp_path / "saved", tmp_path / "child.pid"
    hang = ("import subprocess, sys, time, pathlib\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"pathlib.Path({str(child_pid)!r}).write_text(str(child.pid))\n"
            f"print('step 12 done', flush=True); pathlib.Path({str(saved)!r}).touch(); time.sleep(600)\n")
    lines: list[str] = []
    started = time.monotonic()
    assert run_launch([sys.executable, "-c", hang], dict(os.environ), lines.append, saved.is_file,
                      grace_seconds=2) == 0
    assert time.monotonic() - started < 60 and lines == ["step 12 done"]
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{child_pid.read_text()}") or \
        open(f"/proc/{child_pid.read_text()}/stat").read().split()[2] == "Z"  # its rank is gone too

    leftover = ("import subprocess, sys\n"
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                "print('done', flush=True)\n")
    started = time.monotonic()
    assert run_launch([sys.executable, "-c", leftover], dict(os.environ), lines.append, lambda: False) == 0
    assert time.monotonic() - started < 30
