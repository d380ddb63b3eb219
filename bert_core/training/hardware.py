"""What this machine runs fast, decided once per run: the precision `mixed_precision="auto"` stands for, and how many
threads a training process takes when several share the machine.

Precision. bf16 autocast pays only where the hardware multiplies bf16 natively: a CUDA device with bf16, or a CPU
with AMX (`amx_bf16`) or AVX512-BF16 (`avx512_bf16`) units. Elsewhere torch emulates it, many times slower than fp32,
so a CPU without either flag gets fp32 at once. A flag alone does not settle it: with the same flag, bf16 measured
faster than fp32 on one machine and slower on another (the figures, with their machines and commits, are in
docs/measurements.md). So where a flag is present, "auto" measures:
forward and backward of one encoder layer of bert-mini's shape (`measure_bf16_speedup`, about a second), in fp32 and
in bf16, interleaved, and picks bf16 only when it is at least BF16_MIN_SPEEDUP as fast. The result is kept in a file
per CPU model, flags and torch version (`precision_cache()`), so that every run on the same kind of machine, and
every stage key hashed from it, sees the same choice; a probe during which other processes kept more than
MAX_PROBE_NEIGHBOUR_CORES of this process's cores busy (/proc/stat, less this process's own CPU time) is used by its
process and not kept: the next run measures again. torch 2.13 exposes no bf16 query for the CPU
(`get_cpu_capability()` says "AVX512" on both kinds of AVX512 machine), so the CPU flags come from /proc/cpuinfo.
`BERTFLOW_MIXED_PRECISION` overrides what "auto" resolves to for every run of a process tree (the tests set it to
"no" so that their numerics do not depend on the CI machine's CPU); an explicit value is kept.

Threads. Each torch process runs as many OpenMP threads as the machine has cores; two such training processes on
2 cores slow each other ~10x, not 2x. A training process with `num_threads=None` registers itself (a file named by
its pid in `training_registry()`), takes the cores it may use divided by the live registered processes, and
re-divides at every logging step (`ThreadShare.rebalance`), so that runs started one after another converge to an
even share.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bert_core.stage import pid_alive

logger = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # the /proc/cpuinfo flags of native bf16 matrix units, best first
PRECISION_ENV = "BERTFLOW_MIXED_PRECISION"
BF16_MIN_SPEEDUP = 1.15  # bf16 must beat fp32 by this much to be picked: within the probe's noise fp32 (no casts) wins


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
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "auto_precision": "{} ({})".format(*auto_precision())}


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
    if not unit:
        return "no", (f"CPU {model} has no bf16 units (no {' / '.join(CPU_BF16_FLAGS)} flag): fp32, bf16 is emulated "
                      "there")
    probe = cpu_bf16_probe()
    measured = (f"bf16 measured {probe['speedup']:.2f}x fp32 on an encoder layer ({probe['fp32_ms']:.0f} vs "
                f"{probe['bf16_ms']:.0f} ms, {probe['source']})")
    if probe["speedup"] >= BF16_MIN_SPEEDUP:
        return "bf16", f"CPU {model} has {unit}; {measured}"
    return "no", f"CPU {model} has {unit}, but {measured}, under the {BF16_MIN_SPEEDUP}x bf16 needs: fp32"


def _machine_dir(env: str, name: str) -> Path:
    """$env if set, else this user's `bertflow-<name>-<uid>` directory in the machine's temp directory."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(os.environ.get(env) or Path(tempfile.gettempdir()) / f"bertflow-{name}-{uid}")


def precision_cache() -> Path:
    """The directory of the measured bf16 probes (one JSON file per CPU model, flags and torch version)."""
    return _machine_dir("BERTFLOW_HARDWARE_CACHE", "hardware")


def measure_bf16_speedup(repeats: int = 7) -> dict[str, float]:
    """fp32 and bf16-autocast milliseconds (medians) of forward + backward through one encoder layer of bert-mini's
    shape (hidden 256, 4 heads, FFN 1024, batch 16 x 128 tokens), the two interleaved so that a neighbour's load
    skews both alike; `speedup` is fp32 time over bf16 time."""
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, activation="gelu", batch_first=True)
    inputs = torch.randn(16, 128, 256, generator=generator)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.inference_mode(False), torch.enable_grad():  # "auto" may be resolved under no_grad
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = layer(inputs)
            out.float().sum().backward()
        return time.perf_counter() - start

    step(False), step(True)  # warm-up: kernels chosen, weights cast once
    times = {False: [], True: []}
    for _ in range(repeats):
        for bf16 in (False, True):
            times[bf16].append(step(bf16))
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    return {"fp32_ms": fp32 * 1000, "bf16_ms": bf16 * 1000, "speedup": fp32 / bf16}


_PROBES: dict[str, dict] = {}
MAX_PROBE_NEIGHBOUR_CORES = 0.5  # other processes' average busy cores during the probe above which it is not kept


def cpu_reading() -> tuple[float, float, float] | None:
    """(the busy CPU seconds of this process's cores, from Linux /proc/stat; this process's own CPU seconds; the
    wall clock), or None where /proc/stat cannot be read."""
    try:
        cores = {f"cpu{c}" for c in os.sched_getaffinity(0)}
        with open("/proc/stat", encoding="ascii") as handle:  # cpuN user nice system idle iowait irq softirq ...
            ticks = sum(sum(map(int, f[1:4] + f[6:8])) for f in map(str.split, handle) if f and f[0] in cores)
    except (OSError, AttributeError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK"), sum(os.times()[:2]), time.perf_counter()


def cores_busy_elsewhere(before, after) -> float | None:
    """The average number of this process's cores that other processes kept busy between two `cpu_reading`s
    (None without both)."""
    if before is None or after is None or after[2] <= before[2]:
        return None
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / (after[2] - before[2])


def cpu_bf16_probe() -> dict[str, object]:
    """This kind of machine's measured bf16 speedup: from this process's memory, else its cache file, else measured
    now (and written atomically). A cache file that does not parse is measured again."""
    info = cpu_info()
    ident = f"{info['model']}|{' '.join(sorted(info['flags']))}|torch {torch.__version__}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    if key in _PROBES:
        return _PROBES[key]
    path = precision_cache() / f"bf16-probe-{key}.json"
    try:
        probe = json.loads(path.read_text())
        probe = {name: float(probe[name]) for name in ("fp32_ms", "bf16_ms", "speedup")}
        probe["source"] = f"cached in {path}"
    except (OSError, ValueError, KeyError, TypeError):
        before = cpu_reading()
        probe = measure_bf16_speedup()
        others = cores_busy_elsewhere(before, cpu_reading())
        if others is not None and others > MAX_PROBE_NEIGHBOUR_CORES:
            # Two timings beside a neighbour's load say little about the machine: used by this process only.
            probe["source"] = (f"measured now beside other load ({others:.1f} cores busy elsewhere), so not kept "
                               "for other runs")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".tmp-{os.getpid()}")
            temporary.write_text(json.dumps({**probe, "machine": ident}))
            os.replace(temporary, path)
            probe["source"] = f"measured now, kept in {path}"
        logger.info("bf16 probe on %s: fp32 %.1f ms, bf16 %.1f ms per layer step (%.2fx), %s", info["model"],
                    probe["fp32_ms"], probe["bf16_ms"], probe["speedup"], probe["source"])
    _PROBES[key] = probe
    return probe


def effective_precision(requested: str) -> str:
    """The precision `requested` runs in on this machine, without logging: what a stage key hashes, so that a cached
    result made in bf16 is not reused where "auto" means fp32, nor redone where it means the same."""
    return auto_precision()[0] if requested == "auto" else requested


def accelerate_file_precision(path: str | Path) -> str:
    """The `mixed_precision` an Accelerate config file (YAML or JSON) launches with ("no" where it says none)."""
    import yaml  # lazy: only runs with a config file read it

    settings = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return str(settings.get("mixed_precision") or "no")


def run_precision(config) -> str:
    """The precision a pretraining run runs in, without logging (what its stage key hashes): with an Accelerate
    config file, the file's (it decides the launch); else `config.mixed_precision`, "auto" resolved for this machine."""
    if getattr(config, "accelerate_config_file", None):
        return accelerate_file_precision(config.accelerate_config_file)
    return effective_precision(config.mixed_precision)


def accelerator_precision(config) -> str | None:
    """What a training process hands `Accelerator(mixed_precision=...)`. Launched with an Accelerate config file:
    None, so that Accelerate takes the file's from the environment `accelerate launch` sets
    (ACCELERATE_MIXED_PRECISION), or the file's own when run without a launch. Otherwise the config's value, resolved
    here when it is still "auto" (a launch resolves it once, before it starts the processes: `launch.launch_config`)."""
    if getattr(config, "accelerate_config_file", None):
        return None if os.environ.get("ACCELERATE_MIXED_PRECISION") else accelerate_file_precision(
            config.accelerate_config_file)
    return resolve_mixed_precision(config.mixed_precision)


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
    return _machine_dir("BERTFLOW_TRAINING_REGISTRY", "training")


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
