"""The processes of a training run: the `accelerate launch` command line and its environment, what the ranks
share (a flag, the check that they ended with equal weights on disjoint examples), and the end of a launched rank.

A rank ends its run in two steps: the process group is destroyed (all ranks, after a final barrier), then the
process exits. Either can hang in PyTorch's distributed runtime after everything is saved (destroy_process_group
"has a certain probability of hangs", pytorch/pytorch#75097; gloo's "barrier followed by context destruction
causes some participants to fail", pytorch/gloo#155; gloo's worker threads still holding tensors while the
interpreter finalises, pytorch/pytorch#179291). One such hang kept a finished 12-step 2-process gloo run alive past a
600 s test timeout in CI (its summary was already printed); the same run ended cleanly 25 times in a row on this
machine. So a launched rank ends with `end_training` under a watchdog and leaves with `exit_now`, which skips
interpreter finalisation: neither can hang a finished run, and a stuck teardown prints its stacks. On the parent's
side, `run_launch` supervises a launch: it streams the launch's lines, and a launch whose run is saved but that has
not exited a grace time later is ended with every process below it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object

from bert_core.training.hardware import effective_precision, resolve_mixed_precision

logger = logging.getLogger(__name__)

# Seconds a rank may spend shutting its process group down after its outputs are saved.
TEARDOWN_SECONDS = 60.0


def launched_rank() -> bool:
    """Whether this process is one rank of several started by a launcher (accelerate launch, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


FAULT_ENV = "BERTFLOW_FAULT_KILL"


def fault_point(point: str, rank: int) -> None:
    """A deterministic lost process, for the fault-tolerance tests: with BERTFLOW_FAULT_KILL="<rank>:<point>:<marker
    file>" the process of that rank kills itself (SIGKILL: nothing of it runs after) at `point`, once: it writes the
    marker file (the time) first, and does not fire again while it exists. Points: "step-N" (after optimizer step
    N), "checkpoint-N-created" / "-saved" / "-stamped" (inside the step-N checkpoint's write, `save_checkpoint`)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fault_rank, fault_point_name, marker = spec.split(":", 2)
    if int(fault_rank) == rank and fault_point_name == point and not os.path.exists(marker):
        Path(marker).write_text(repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)


def launch_config(config: Any) -> Any:
    """The PretrainConfig a launch hands its processes: "auto" resolved once, here, before they start (logged with
    the reason), so no process decides again; with an Accelerate config file, unchanged: the file decides the
    precision, and the processes take it from the environment `accelerate launch` sets."""
    if config.accelerate_config_file:
        return config
    return replace(config, mixed_precision=resolve_mixed_precision(config.mixed_precision))


def launch_command(config_path: str | Path, config: Any) -> list[str]:
    """The `accelerate launch` command line that runs `bert_core pretrain` in `num_processes` processes (`config`: a
    PretrainConfig)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config.accelerate_config_file:
        cmd += ["--config_file", str(config.accelerate_config_file)]
        if config.machine_rank is not None:
            cmd += ["--machine_rank", str(config.machine_rank)]
    else:
        if config.num_processes > 1:
            # --multi_gpu is Accelerate's switch for several data-parallel processes; without CUDA they use gloo.
            cmd += ["--multi_gpu", "--main_process_port", str(config.main_process_port)]
        elif not torch.cuda.is_available():
            cmd += ["--cpu"]
        cmd += ["--num_processes", str(config.num_processes), "--num_machines", "1",
                "--mixed_precision", effective_precision(config.mixed_precision)]
    cmd += ["--dynamo_backend", "no", "-m", "bert_core", "pretrain", "--config", str(config_path)]
    return cmd


def launch_env(config: Any) -> dict[str, str]:
    env = dict(os.environ)
    if not torch.cuda.is_available():
        if config.num_threads:
            env["OMP_NUM_THREADS"] = str(config.num_threads)
        # Without num_threads (or OMP_NUM_THREADS), each rank takes its share of the cores (hardware.ThreadShare).
        # Without it, `--multi_gpu` on a machine with no GPU starts N independent single-process runs
        # (DistributedType.NO, each rank 0 of 1); with it they form one gloo group (MULTI_CPU).
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def end_training(accelerator, seconds: float = TEARDOWN_SECONDS) -> None:
    """`accelerator.end_training()` (trackers closed, process group destroyed); call it after the run's outputs are
    saved and every rank has passed a final barrier. In a multi-process run a teardown that takes longer than
    `seconds` logs a warning with every thread's stack and ends the process with status 0: the run's work is saved,
    and a hung rank would otherwise hold its launcher (and a Prefect worker) forever."""
    if accelerator.num_processes == 1:
        accelerator.end_training()
        return
    timer = threading.Timer(seconds, _teardown_hung, args=(accelerator.process_index, seconds))
    timer.daemon = True
    timer.start()
    try:
        accelerator.end_training()
    finally:
        timer.cancel()


def _teardown_hung(rank: int, seconds: float) -> None:
    logger.warning("rank %d: the process group did not shut down within %.0f s after the run was saved; exiting "
                   "without it. Stacks of every thread:", rank, seconds)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    exit_now(0)


def exit_now(status: int) -> None:
    """Flush what this process wrote and exit without interpreter finalisation (no atexit handlers, no thread
    joins, no destructors of distributed-runtime objects)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def check_ranks(accelerator: Accelerator, objective: torch.nn.Module, seen_digest: str,
                 seen_ids: list[np.ndarray]) -> dict[str, Any]:
    """Per rank: a hash of its final weights and of the examples it trained on; whether ranks overlapped.

    Written to `ranks.json`: data-parallel ranks must end with identical weights and see disjoint examples.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(accelerator.unwrap_model(objective).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    ids = np.concatenate(seen_ids) if seen_ids else np.zeros(0, dtype=np.int64)
    mine = {"rank": accelerator.process_index, "weights_sha256": digest.hexdigest(), "examples_sha256": seen_digest,
            "examples_checked": int(ids.size), "ids": ids.tolist()}
    everyone = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    sets = [set(r.pop("ids")) for r in everyone]
    overlap = sum(len(a & b) for i, a in enumerate(sets) for b in sets[i + 1 :])
    return {"world_size": accelerator.num_processes, "ranks": everyone,
            "identical_weights": len({r["weights_sha256"] for r in everyone}) == 1,
            "overlapping_examples": overlap}


def fresh_accelerator_state() -> None:
    """Forget Accelerate's process-wide state left by an earlier single-process run in this process (a notebook,
    the tests), so that this run may use other settings such as mixed precision. Launched ranks start clean."""
    if not launched_rank() and hasattr(AcceleratorState, "_reset_state"):
        AcceleratorState._reset_state(reset_partial_state=True)


def broadcast_flag(accelerator: Accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(tensor, reduction="sum").item() > 0)


# How long a launch may take to exit once its run is saved: ranks end their own teardown after TEARDOWN_SECONDS;
# this covers the launcher around them.
TEARDOWN_GRACE_SECONDS = 2 * TEARDOWN_SECONDS + 30


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
