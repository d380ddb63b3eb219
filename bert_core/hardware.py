"""What this machine runs fast, decided once per run: the precision `mixed_precision="auto"` stands for, and how many
threads a training process takes when several share the machine.

Precision. bf16 autocast pays only where the hardware multiplies bf16 natively: a CUDA device with bf16, or a CPU
with AMX (`amx_bf16`) or AVX512-BF16 (`avx512_bf16`) units. Elsewhere torch emulates it: on an AVX2-only AMD EPYC a
bert-mini step ran 14x slower in bf16 than in fp32 (issue 16), while on an AVX512-BF16 EPYC bf16 pretraining ran
1.86x (bert-mini) and 1.26x (ModernBERT-tiny) as fast as fp32 (`python bench/hardware.py`). torch 2.13 exposes
no bf16 query for the CPU (`get_cpu_capability()` says "AVX512" on both kinds of AVX512 machine), so the CPU flags
come from /proc/cpuinfo. `BERTFLOW_MIXED_PRECISION` overrides what "auto" resolves to for every run of a process
tree (the tests set it to "no" so that their numerics do not depend on the CI machine's CPU); an explicit value is
kept.

Threads. Each torch process runs as many OpenMP threads as the machine has cores; two such training processes on
2 cores slow each other ~10x, not 2x. A training process with `num_threads=None` registers itself (a file named by
its pid in `training_registry()`), takes the cores it may use divided by the live registered processes, and
re-divides at every logging step (`ThreadShare.rebalance`), so that runs started one after another converge to an
even share.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from bert_core.stage import pid_alive

logger = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # the /proc/cpuinfo flags of native bf16 matrix units, best first
PRECISION_ENV = "BERTFLOW_MIXED_PRECISION"


@functools.cache
def cpu_info() -> dict[str, object]:
    """The CPU's model name and flags (Linux /proc/cpuinfo; elsewhere the platform's name and no flags)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and not model:
                    model = value.strip()
                elif name in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    return {"model": model or "unknown CPU", "flags": frozenset(flags)}


def cpu_bf16_unit() -> str | None:
    """The CPU's native bf16 unit (a /proc/cpuinfo flag of CPU_BF16_FLAGS), or None where bf16 is emulated."""
    return next((flag for flag in CPU_BF16_FLAGS if flag in cpu_info()["flags"]), None)


def machine_description() -> dict[str, str]:
    """What a benchmark figure or a run record says about the machine it came from."""
    unit = cpu_bf16_unit()
    return {"cpu": str(cpu_info()["model"]), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16": unit or "none (bf16 emulated)", "cores": str(available_cores()),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


def auto_precision() -> tuple[str, str]:
    """("bf16" or "no", why): what `mixed_precision="auto"` runs on this machine."""
    forced = os.environ.get(PRECISION_ENV)
    if forced:
        if forced not in ("no", "bf16", "fp16"):
            raise ValueError(f"{PRECISION_ENV} is {forced!r}; expected 'no', 'bf16' or 'fp16'")
        return forced, f"{PRECISION_ENV}={forced}"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        if torch.cuda.is_bf16_supported():
            return "bf16", f"CUDA device {name} has bf16"
        return "no", f"CUDA device {name} has no bf16: fp32"
    unit = cpu_bf16_unit()
    model = cpu_info()["model"]
    if unit:
        return "bf16", f"CPU {model} has {unit}"
    return "no", f"CPU {model} has no bf16 units (no {' / '.join(CPU_BF16_FLAGS)} flag): fp32, bf16 is emulated there"


def effective_precision(requested: str) -> str:
    """The precision `requested` runs in on this machine, without logging: what a stage key hashes, so that a cached
    result made in bf16 is not reused where "auto" means fp32, nor redone where it means the same."""
    return auto_precision()[0] if requested == "auto" else requested


def resolve_mixed_precision(requested: str) -> str:
    """The precision a run uses for `requested` ("auto", "no", "bf16", "fp16"), logged with the reason; an explicit
    bf16 on a CPU without bf16 units runs as asked, with a warning."""
    if requested == "auto":
        choice, why = auto_precision()
        logger.info("mixed_precision auto -> %s (%s)", choice, why)
        return choice
    if requested == "bf16" and not torch.cuda.is_available() and cpu_bf16_unit() is None:
        warnings.warn(f"mixed_precision='bf16' on CPU {cpu_info()['model']}, which has no bf16 units: torch emulates "
                      "bf16 there, typically 10x or more slower than fp32; mixed_precision='auto' picks fp32 on "
                      "this machine", stacklevel=2)
    return requested


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def training_registry() -> Path:
    """The directory where training processes of this user on this machine register (one empty file per pid)."""
    return Path(os.environ.get("BERTFLOW_TRAINING_REGISTRY") or
                Path(tempfile.gettempdir()) / f"bertflow-training-{os.getuid() if hasattr(os, 'getuid') else 0}")


def registered_processes(registry: Path | None = None) -> list[int]:
    """The live registered training processes; files of dead ones are removed."""
    registry = registry or training_registry()
    live = []
    for entry in registry.glob("*") if registry.is_dir() else ():
        pid = int(entry.name) if entry.name.isdigit() else None
        if pid is not None and pid_alive(pid):
            live.append(pid)
        else:
            entry.unlink(missing_ok=True)
    return sorted(live)


class ThreadShare:
    """This process's torch threads while it trains: `num_threads` when given, else OMP_NUM_THREADS when set, else
    an even share of its cores among the live registered training processes. `start()` registers (the file goes at
    `stop()`, at exit, or with the process: a dead pid's file is ignored and removed); `rebalance()` re-divides."""

    def __init__(self, num_threads: int | None = None, registry: Path | None = None):
        omp = os.environ.get("OMP_NUM_THREADS", "")
        self.fixed = num_threads or (int(omp) if omp.isdigit() and int(omp) > 0 else None)
        self.source = "num_threads" if num_threads else "OMP_NUM_THREADS"
        self.registry = registry or training_registry()
        self.threads = 0

    def start(self) -> "ThreadShare":
        if self.fixed is None:
            self.registry.mkdir(parents=True, exist_ok=True)
            (self.registry / str(os.getpid())).touch()
            atexit.register(self.stop)
        self.rebalance()
        return self

    def stop(self) -> None:
        if self.fixed is None:
            (self.registry / str(os.getpid())).unlink(missing_ok=True)

    def __enter__(self) -> "ThreadShare":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def share(self) -> int:
        if self.fixed is not None:
            return self.fixed
        return max(1, available_cores() // max(1, len(registered_processes(self.registry))))

    def rebalance(self) -> int:
        threads = self.share()
        if threads != self.threads:
            torch.set_num_threads(threads)
            logger.info("torch threads: %d (%s)", threads, self.source if self.fixed is not None else
                        f"{available_cores()} cores / {len(registered_processes(self.registry))} training processes")
            self.threads = threads
        return threads
