"""Running one benchmark subject in a fresh Python process and reading back its JSON result line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Defines peak_mb() in the child: its peak RSS, VmHWM, which exec resets. getrusage's ru_maxrss is not reset by
# exec on Linux, so a child started from a big benchmark process would report at least the parent's size.
PEAK_MB = """
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""


def child_env(env: dict[str, str | None] | None = None) -> dict[str, str]:
    """A benchmark subject's environment: this process's, offline, no progress bars, plus `env` (None removes)."""
    merged = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", **(env or {})}
    return {k: v for k, v in merged.items() if v is not None}


def run_child(code: str, *args, env: dict[str, str] | None = None) -> dict:
    """Run `code` (which may call peak_mb()) with `args` in a fresh interpreter; return its last stdout line as JSON.
    `env` adds variables to this process's environment (a value None removes one)."""
    out = subprocess.run([sys.executable, "-c", PEAK_MB + code, *map(str, args)], capture_output=True, text=True,
                         cwd=REPO, env=child_env(env))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(name: str, result: dict) -> None:
    """Write bench/results/<name>.json (everything) and print the scalar figures as one JSON line, last; both
    carry the machine the figures came from (CPU model, torch's CPU capability, bf16 units, cores, GPU), since
    the same code runs 15-30x apart between CPUs with and without bf16 units."""
    sys.path.insert(0, str(REPO))
    from bert_core.training.hardware import machine_description

    machine = machine_description()
    result = {**machine, **result}
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}))
