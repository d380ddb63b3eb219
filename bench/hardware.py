"""Benchmark of the hardware choices bertflow makes for a training run. Run with no arguments:
`python bench/hardware.py` (about 12 minutes on 2 cores; BENCH_REPEATS, default 3, sets the repeats).

Every figure is a real `pretrain()` on the bundled sample's shards (8k WordPiece vocabulary, seq 128, batch 16,
MLM only), each run in a fresh process; tokens/s are non-pad tokens per second over the logging windows after the
first (warm-up), medians over the repeats.

- Precision: bert-mini and ModernBERT-tiny in fp32 and with bf16 autocast, on all the cores, and what
  `mixed_precision="auto"` picks here. bf16 pays only on hardware with bf16 units (AMX / AVX512-BF16 on a CPU);
  elsewhere torch emulates it, 15-30x slower than fp32 on an AVX2-only EPYC. On a CPU without bf16 units
  the bf16 runs are short (EMULATED_STEPS) and run once: at full length they alone would take most of an hour.
- Threads: one run alone, then two runs started together, (a) each with the default `num_threads=None`, so that
  they share the cores (`bert_core.training.hardware.ThreadShare`), and (b) each taking every core, the way two torch
  processes do by default (OMP's thread count = the machine's cores). Goal: each of the pair keeps >= 40% of the
  solo run's throughput in (a).

Prints tables, writes bench/results/hardware.json and prints one JSON object as its last line.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from child import child_env, report, run_child  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
STEPS, LOGGING = 48, 8
PAIR_STEPS = 96  # the pair runs longer: the first process re-divides its threads at its first logging step
EMULATED_STEPS, EMULATED_LOGGING = 12, 4  # bf16 on a CPU without bf16 units: two timed windows after the first

RUN = r"""
import json, statistics, sys
from bert_core.training.pretrain import PretrainConfig, pretrain
shards, out, preset, architecture, precision, steps, logging, threads = sys.argv[1:9]
summary = pretrain(PretrainConfig(
    shards_dir=shards, output_dir=out, preset=preset, architecture=architecture, per_device_train_batch_size=16,
    learning_rate=1e-3, num_warmup_steps=10, max_train_steps=int(steps), logging_steps=int(logging),
    eval_steps=10**6, checkpointing_steps=10**6, mixed_precision=precision, resume_from_checkpoint=None,
    num_threads=int(threads) or None))
records = [json.loads(l) for l in open(f"{out}/metrics.jsonl") if '"tokens_per_second"' in l][1:]
print(json.dumps({"tokens_per_second": statistics.median(r["tokens_per_second"] for r in records),
                  "mixed_precision": summary["mixed_precision"]}))
"""


def build_shards(work: Path) -> Path:
    from bert_core.examples.generation import ExamplesConfig, generate_examples
    from bert_core.ingest.corpus import IngestConfig, ingest_corpus
    from bert_core.examples.tokenizer import TokenizerConfig

    documents = ingest_corpus(IngestConfig(validation_fraction=0.05), work / "documents")
    return generate_examples(ExamplesConfig(max_seq_length=128, pair_objective="none", masking="dynamic",
                                            tokenizer=TokenizerConfig(vocab_size=8192)), documents, work / "examples")


def _env(work: Path) -> dict:
    """No OMP_NUM_THREADS (the runs choose their threads) and a registry of the benchmark's own training processes."""
    return {"OMP_NUM_THREADS": None, "BERTFLOW_TRAINING_REGISTRY": str(work / "registry")}


def solo(shards: Path, work: Path, preset: str, architecture: str, precision: str, steps: int = STEPS,
         logging: int = LOGGING) -> dict:
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    return run_child(RUN, shards, out, preset, architecture, precision, steps, logging, 0, env=_env(work))


def pair(shards: Path, work: Path, threads: int, steps: int) -> list[dict]:
    """Two runs started together (bert-mini, fp32); `threads` 0: the default share."""
    env = child_env(_env(work))
    procs = []
    for i in range(2):
        out = work / f"pair-{i}"
        shutil.rmtree(out, ignore_errors=True)
        procs.append(subprocess.Popen([sys.executable, "-c", RUN, str(shards), str(out), "bert-mini", "bert", "no",
                                       str(steps), str(LOGGING), str(threads)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(stderr[-3000:])
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    from bert_core.training.hardware import auto_precision, available_cores, cpu_bf16_unit

    cores = available_cores()
    emulated = cpu_bf16_unit() is None  # bf16 without bf16 units: torch emulates it (this bench runs on the CPU)
    work = Path(tempfile.mkdtemp(prefix="bertflow-bench-hardware-"))
    try:
        shards = build_shards(work)
        precision: dict[str, list[float]] = {}
        for repeat in range(REPEATS):
            for model, preset, architecture in (("bert-mini", "bert-mini", "bert"),
                                                ("modernbert-tiny", "bert-tiny", "modernbert")):
                for mp in ("no", "bf16"):
                    short = mp == "bf16" and emulated  # one short run: emulated bf16 is 15-30x slower
                    if short and repeat:
                        continue
                    steps = (EMULATED_STEPS, EMULATED_LOGGING) if short else (STEPS, LOGGING)
                    precision.setdefault(f"{model} {mp}", []).append(
                        solo(shards, work, preset, architecture, mp, *steps)["tokens_per_second"])
        alone, shared, greedy = [], [], []
        for _ in range(REPEATS):
            alone.append(solo(shards, work, "bert-mini", "bert", "no")["tokens_per_second"])
            shared.extend(r["tokens_per_second"] for r in pair(shards, work, 0, PAIR_STEPS))
            greedy.extend(r["tokens_per_second"] for r in pair(shards, work, cores, STEPS))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {name: statistics.median(values) for name, values in precision.items()}
    choice, why = auto_precision()
    print(f"\nPrecision: tokens/s, {cores} threads, median of {REPEATS}"
          + (f" (bf16: emulated, one run of {EMULATED_STEPS} steps)" if emulated else "") + "\n")
    print(f"{'model':20s} {'fp32':>9s} {'bf16':>9s} {'bf16/fp32':>10s}")
    for model in ("bert-mini", "modernbert-tiny"):
        fp32, bf16 = med[f"{model} no"], med[f"{model} bf16"]
        print(f"{model:20s} {fp32:9.0f} {bf16:9.0f} {bf16 / fp32:9.2f}x")
    print(f"mixed_precision='auto' here: {choice} ({why})")
    solo_tps = statistics.median(alone)
    print(f"\nThreads: bert-mini fp32 tokens/s, {cores} cores, median of {REPEATS} (pairs: each process)\n")
    print(f"{'alone (default threads)':44s} {solo_tps:9.0f}")
    print(f"{'two at once, default num_threads (shared)':44s} {statistics.median(shared):9.0f}  "
          f"{statistics.median(shared) / solo_tps:.0%} of alone")
    print(f"{'two at once, each all ' + str(cores) + ' cores':44s} {statistics.median(greedy):9.0f}  "
          f"{statistics.median(greedy) / solo_tps:.0%} of alone")
    result = {
        "auto_mixed_precision": choice,
        "bf16_speedup_bert_mini": med["bert-mini bf16"] / med["bert-mini no"],
        "bf16_speedup_modernbert_tiny": med["modernbert-tiny bf16"] / med["modernbert-tiny no"],
        "shared_pair_share_of_solo": statistics.median(shared) / solo_tps,
        "greedy_pair_share_of_solo": statistics.median(greedy) / solo_tps,
        "solo_tokens_per_second": solo_tps,
        "repeats": REPEATS,
        "bf16_emulated": emulated,
        "precision_runs": precision, "solo_runs": alone, "shared_pair_runs": shared, "greedy_pair_runs": greedy,
    }
    report("hardware", result)


if __name__ == "__main__":
    main()
