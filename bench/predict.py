"""Benchmark of batch prediction with a registered model: bertflow's pyfunc (`mlflow.pyfunc.load_model(...)
.predict(texts)`) against a transformers `pipeline("text-classification")` on the same model directory, the same
texts and the same batch size, fp32 on all the cores. Run with no arguments: `python bench/predict.py` (about 3
minutes on 2 cores; BENCH_REPEATS, default 3, sets the repeats).

The model is a bert-mini classifier (4 x 256) with the bundled sample's 8k WordPiece vocabulary; its weights are
random (speed and agreement do not depend on them: both sides run the very same weights). Texts: the SST-2 dev
sentences from ../shared/data (BERTFLOW_SHARED_DATA), else the bundled sample's, repeated to 2,000. Each subject
runs in a fresh process; seconds are the median of the repeats, after one warm-up call. Goal: >= 1.5x examples/s
and identical labels.

Prints a table, writes bench/results/predict.json and prints one JSON object as its last line.
"""

from __future__ import annotations

import csv
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from child import report, run_child  # noqa: E402

from bert_core.registry.pyfunc_model import BATCH_SIZE as BATCH  # noqa: E402  (the registered model's batch size)

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
N_TEXTS = 2000
SHARED = Path(os.environ.get("BERTFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))

PYFUNC = r"""
import json, sys, time
import mlflow
home, texts_file, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = json.load(open(texts_file))
mlflow.set_tracking_uri(f"sqlite:///{home}/mlflow.db")
model = mlflow.pyfunc.load_model("models:/bench-predict/1")
model.predict(texts[:64])
seconds = []
for _ in range(repeats):
    start = time.perf_counter(); out = model.predict(texts); seconds.append(time.perf_counter() - start)
print(json.dumps({"seconds": seconds, "labels": out["label"].tolist(), "peak_mb": peak_mb()}))
"""

PIPELINE = r"""
import json, sys, time
import transformers
model_dir, texts_file, repeats, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
texts = json.load(open(texts_file))
classify = transformers.pipeline("text-classification", model=model_dir, tokenizer=model_dir, device="cpu",
                                 truncation=True, max_length=128)
classify(texts[:64], batch_size=batch)
seconds = []
for _ in range(repeats):
    start = time.perf_counter(); out = classify(texts, batch_size=batch); seconds.append(time.perf_counter() - start)
print(json.dumps({"seconds": seconds, "labels": [r["label"] for r in out], "peak_mb": peak_mb()}))
"""


def texts() -> list[str]:
    from bert_core.ingest.sources import SAMPLE_DIR

    path = SHARED / "tasks" / "sst2" / "dev.tsv"
    path = path if path.is_file() else SAMPLE_DIR / "sst2" / "dev.tsv"
    with open(path, newline="", encoding="utf-8") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return (sentences * (N_TEXTS // len(sentences) + 1))[:N_TEXTS]


def build_model(work: Path) -> Path:
    """A bert-mini classifier with the bundled sample's tokenizer, described and registered like a fine-tuned one."""
    import torch
    from transformers import BertForSequenceClassification

    from bert_core.examples.generation import ExamplesConfig, generate_examples
    from bert_core.ingest.corpus import IngestConfig, ingest_corpus
    from bert_core.training.model import describe_model, model_config
    from bert_core.registry.registration import RegisterConfig, register_model
    from bert_core.examples.tokenizer import TokenizerConfig, load_tokenizer

    documents = ingest_corpus(IngestConfig(validation_fraction=0.05), work / "documents")
    examples = generate_examples(ExamplesConfig(max_seq_length=128, pair_objective="none", masking="dynamic",
                                                tokenizer=TokenizerConfig(vocab_size=8192)), documents,
                                 work / "examples")
    tokenizer = load_tokenizer(Path(examples) / "tokenizer")
    torch.manual_seed(0)
    config = model_config("bert-mini", vocab_size=len(tokenizer))
    config.num_labels, config.id2label = 2, {0: "negative", 1: "positive"}
    config.label2id = {"negative": 0, "positive": 1}
    model_dir = work / "classifier"
    BertForSequenceClassification(config).eval().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    describe_model(model_dir, kind="classifier", label_names=["negative", "positive"], max_seq_length=128)
    register_model(RegisterConfig(model_dir=str(model_dir), registered_model_name="bench-predict",
                                  home=str(work), metrics={"eval_accuracy": 0.5}))
    return model_dir


def main() -> None:
    import json

    work = Path(tempfile.mkdtemp(prefix="bertflow-bench-predict-"))
    model_dir = build_model(work)
    data = texts()
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(data))
    ours = run_child(PYFUNC, work, texts_file, REPEATS)
    theirs = run_child(PIPELINE, model_dir, texts_file, REPEATS, BATCH)
    ours_s, theirs_s = statistics.median(ours["seconds"]), statistics.median(theirs["seconds"])
    agree = sum(a == b for a, b in zip(ours["labels"], theirs["labels"]))
    print(f"\n{len(data)} SST-2 dev texts, bert-mini classifier, batch {BATCH}, fp32, median of {REPEATS}\n")
    print(f"{'subject':42s} {'seconds':>8s} {'examples/s':>11s} {'peak MB':>8s}")
    for name, r, s in (("bertflow registered pyfunc", ours, ours_s),
                       ("transformers pipeline('text-classification')", theirs, theirs_s)):
        print(f"{name:42s} {s:8.2f} {len(data) / s:11.0f} {r['peak_mb']:8.0f}")
    print(f"\nspeedup {theirs_s / ours_s:.2f}x (goal >= 1.5x); labels identical: {agree} of {len(data)}")
    report("predict", {
        "texts": len(data), "batch_size": BATCH, "repeats": REPEATS, "preset": "bert-mini",
        "bertflow_seconds": ours_s, "pipeline_seconds": theirs_s, "speedup": theirs_s / ours_s,
        "bertflow_examples_per_second": len(data) / ours_s, "pipeline_examples_per_second": len(data) / theirs_s,
        "labels_identical": agree, "labels_identical_share": agree / len(data),
        "bertflow_runs": ours["seconds"], "pipeline_runs": theirs["seconds"],
    })


if __name__ == "__main__":
    main()
