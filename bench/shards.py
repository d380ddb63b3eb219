"""Benchmark of example generation. Run with no arguments: `python bench/shards.py` (about 15 minutes on 2 cores;
20 with BENCH_REPEATS=5).

On the same ~15 MB of Wikipedia sentences (the team's WikiExtractor files, ingested by bertflow) and the same
30,522-token WordPiece vocabulary, seq 128, dupe_factor 1, each in a fresh process (time and peak RSS):
- floor: the fast tokenizer's `encode_batch` over every sentence (no example is built);
- bertflow: `generate_examples` from the ingested documents (tokenize, NSP pairs, static 80/10/10 masks, quality
  gates, shuffle, equal-size Arrow shards with checksums), cold (no token store yet), in one process and with
  workers=2; its peak RSS (process and workers together) on the 15 MB slice over that on a 1.5 MB slice is
  `rss_growth_10x`;
- bertflow on a Dask LocalCluster of 1 and of 2 single-threaded workers (started before the clock, as a long-lived
  cluster is): `speedup_2_workers` is 2 over 1, tokenizing and generating units on the workers; the shards must be
  the same bytes for both (`identical_shards_any_workers`). Beside it `machine_speedup_2_processes`, the tokenizer
  alone in 1 and 2 single-threaded processes: what this machine gives two processes at all; and, from Dask's task
  stream, the same speedup split into the stage's own part (`stage_speedup_2_workers`: how busy it keeps two
  workers against one) and the machine's (`task_slowdown_2_workers`: how much slower the same tasks run two at a
  time), see `scaling`;
- google-research/bert: `create_training_instances` from create_pretraining_data.py as published on PyPI in
  bert-tensorflow 1.0.4 (downloaded into a temporary directory; TensorFlow, used there only for file reading, flags
  and logging, is stood in for by the standard library; TFRecord writing is replaced by the same id conversion);
- Hugging Face run_mlm way: `datasets` text loader, batched `map` tokenize, `group_texts` into 128-token blocks,
  `save_to_disk`.
LDDL is not run: lddl 0.1.0 on PyPI pins transformers==4.16.2, dask==2021.7.1 and mpi4py==3.1.3 (an MPI
installation), which cannot live beside this project's pins. Each tool runs BENCH_REPEATS (default 3) times,
interleaved; the table and the ratios use medians (bertflow: the faster of its two settings). Prints a table,
writes bench/results/shards.json and prints one JSON object as its last line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from child import report, run_child  # noqa: E402

SHARED = Path(os.environ.get("BERTFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
WIKI = SHARED / "corpus" / "wikipedia" / "enwiki_2015_extract" / "AA"
TARGET_MB = 15.0
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))

FLOOR = r"""
import json, resource, sys, time
from bert_core.examples.tokenizer import load_tokenizer
tokenizer = load_tokenizer(sys.argv[1])
sentences = [l.rstrip("\n") for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
start = time.perf_counter()
encodings = tokenizer.backend_tokenizer.encode_batch_fast(sentences, add_special_tokens=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "tokens": sum(len(e.ids) for e in encodings),
                  "peak_rss_mb": peak_mb()}))
"""

# In a subject: peak[0], the largest resident memory of the process and all its descendants (worker processes,
# a Dask scheduler's nannies and workers) seen by sample() every 0.1 s.
TREE_PEAK = r"""
import time
import psutil
peak = [0]
def sample():  # this process and its descendants
    me = psutil.Process()
    while True:
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak[0] = max(peak[0], total)
        time.sleep(0.1)
"""

BERTFLOW = TREE_PEAK + r"""
import json, resource, sys, threading, time
from bert_core.examples.generation import ExamplesConfig, generate_examples
from bert_core.examples.tokenizer import TokenizerConfig
if int(sys.argv[4]) > 1:  # worker processes: sample their memory (one process: its own VmHWM says it all)
    threading.Thread(target=sample, daemon=True).start()
config = ExamplesConfig(max_seq_length=128, dupe_factor=1, tokenizer=TokenizerConfig(tokenizer_path=sys.argv[1]))
start = time.perf_counter()
out = generate_examples(config, sys.argv[2], sys.argv[3], workers=int(sys.argv[4]))
seconds = time.perf_counter() - start
manifests = [json.load(open(f"{out}/{s}/manifest.json")) for s in ("train", "validation")]
print(json.dumps({"seconds": seconds, "examples": sum(m["num_examples"] for m in manifests),
                  "tokens": sum(m["num_tokens"] for m in manifests),
                  "peak_rss_mb": max(peak[0] / 2**20, peak_mb())}))
"""

DASK = TREE_PEAK + r"""
import json, sys, threading, time
from distributed import Client, get_task_stream
from bert_core.examples.generation import ExamplesConfig, generate_examples
from bert_core.stage import local_data_cluster
from bert_core.examples.shards import read_manifest
from bert_core.examples.tokenizer import TokenizerConfig
if __name__ == "__main__":
    config = ExamplesConfig(max_seq_length=128, dupe_factor=1, tokenizer=TokenizerConfig(tokenizer_path=sys.argv[1]))
    with local_data_cluster(int(sys.argv[4])) as cluster, Client(cluster) as client:  # the pipeline's own cluster
        client.run(lambda: __import__("bert_core.examples.generation"))  # a long-lived cluster's workers have imported it
        threading.Thread(target=sample, daemon=True).start()
        with get_task_stream(client) as stream:  # each task's compute interval on its worker
            start = time.perf_counter()
            out = generate_examples(config, sys.argv[2], sys.argv[3], executor=client.get_executor())
            seconds = time.perf_counter() - start
    busy = {}  # worker -> seconds spent computing tasks
    for task in stream.data:
        for part in task["startstops"]:
            if part["action"] == "compute":
                busy[task["worker"]] = busy.get(task["worker"], 0.0) + part["stop"] - part["start"]
    manifests = [read_manifest(f"{out}/{s}") for s in ("train", "validation")]
    print(json.dumps({"seconds": seconds, "examples": sum(m["num_examples"] for m in manifests),
                      "tokens": sum(m["num_tokens"] for m in manifests), "peak_rss_mb": peak[0] / 2**20,
                      "tasks": len(stream.data), "task_seconds": sum(busy.values()),
                      "busiest_worker_task_seconds": max(busy.values()),
                      "shards_sha256": [s["sha256"] for m in manifests for s in m["shards"]]}))
"""

# The machine's own ceiling for two processes: the tokenizer alone, one thread per process, on halves of the text.
FLOOR_PROCESSES = r"""
import json, sys, time
from concurrent.futures import ProcessPoolExecutor
def encode(args):
    import os
    os.environ.update({"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    from bert_core.examples.tokenizer import load_tokenizer
    path, text, part, parts = args
    sentences = [l for l in open(text, encoding="utf-8").read().splitlines() if l.strip()][part::parts]
    load_tokenizer(path).backend_tokenizer.encode_batch_fast(sentences, add_special_tokens=False)
if __name__ == "__main__":
    n = int(sys.argv[3])
    with ProcessPoolExecutor(n) as pool:
        list(pool.map(encode, [(sys.argv[1], sys.argv[2], 0, 1)] * n))  # start and warm the workers
        start = time.perf_counter()
        list(pool.map(encode, [(sys.argv[1], sys.argv[2], i, n) for i in range(n)]))
    print(json.dumps({"seconds": time.perf_counter() - start, "tokens": 0, "peak_rss_mb": 0}))
"""

GOOGLE = r"""
import json, logging, random, resource, sys, time, types
# Stand-ins for the TensorFlow pieces create_pretraining_data.py touches: flags, file reading, logging.
class _Flags:
    def __getattr__(self, name): return None
def _define(*args, **kwargs): pass
flags = types.SimpleNamespace(FLAGS=_Flags(), DEFINE_string=_define, DEFINE_integer=_define, DEFINE_bool=_define,
                              DEFINE_float=_define, DEFINE_boolean=_define, mark_flag_as_required=_define)
v1 = types.SimpleNamespace(flags=flags, gfile=types.SimpleNamespace(GFile=open, Glob=lambda p: [p]),
                           logging=logging, app=types.SimpleNamespace(run=lambda: None))
tf = types.ModuleType("tensorflow"); tf.compat = types.SimpleNamespace(v1=v1)
compat = types.ModuleType("tensorflow.compat"); compat.v1 = v1
sys.modules.update({"tensorflow": tf, "tensorflow.compat": compat, "tensorflow.compat.v1": v1})
absl = types.ModuleType("absl"); absl.flags = flags
sys.modules.setdefault("absl", absl); sys.modules.setdefault("absl.flags", flags)
sys.path.insert(0, sys.argv[1])
from bert import create_pretraining_data as cpd, tokenization
tokenizer = tokenization.FullTokenizer(vocab_file=sys.argv[2], do_lower_case=True)
start = time.perf_counter()
instances = cpd.create_training_instances([sys.argv[3]], tokenizer, 128, 1, 0.1, 0.15, 20, random.Random(12345))
tokens = 0
for instance in instances:  # what write_instance_to_example_files does before building tf.train.Example
    ids = tokenizer.convert_tokens_to_ids(instance.tokens)
    labels = tokenizer.convert_tokens_to_ids(instance.masked_lm_labels)
    tokens += len(ids)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "examples": len(instances), "tokens": tokens,
                  "peak_rss_mb": peak_mb()}))
"""

HF = r"""
import json, resource, sys, time
start = time.perf_counter()
import datasets
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
raw = datasets.load_dataset("text", data_files=sys.argv[2], split="train", cache_dir=sys.argv[3])
raw = raw.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True)
tokenized = raw.map(lambda b: tokenizer(b["text"], return_special_tokens_mask=True), batched=True,
                    remove_columns=["text"])
def group_texts(examples, size=128):
    concatenated = {k: sum(examples[k], []) for k in examples}
    total = len(concatenated["input_ids"]) // size * size
    return {k: [v[i : i + size] for i in range(0, total, size)] for k, v in concatenated.items()}
grouped = tokenized.map(group_texts, batched=True)
grouped.save_to_disk(sys.argv[4])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "examples": len(grouped), "tokens": len(grouped) * 128,
                  "peak_rss_mb": peak_mb()}))
"""


def median_run(runs: list[dict]) -> dict:
    """The run with the median time, with the spread of times and the largest peak RSS of all runs."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[len(ordered) // 2], "min_seconds": ordered[0]["seconds"], "max_seconds": ordered[-1]["seconds"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": len(runs)}


def scaling(one: list[dict], two: list[dict]) -> dict:
    """`speedup_2_workers` split into what the stage does and what the machine does, per interleaved repeat (a
    1-worker run and the 2-worker run beside it), medians and ranges over the repeats.

    With busy_n the share of n workers' wall time spent computing tasks (Dask's task stream) and slowdown the
    2-worker run's total task time over the 1-worker run's (the same tasks, now two at a time on the machine):
    speedup = 2 * busy_2 / busy_1 / slowdown, exactly. `stage_speedup_2_workers` = 2 * busy_2 / busy_1 is the
    stage's own part: the speedup if two tasks at once ran as fast as one alone (idle workers, serial steps and
    Dask's overhead lower it). Both busy shares are taken within one run, so a slow spell of a shared host, which
    stretches a run's tasks and its wall time alike, mostly cancels out of it; it lands in slowdown instead."""
    def busy(run: dict, workers: int) -> float:
        return run["task_seconds"] / (workers * run["seconds"])

    pairs = {"paired_speedup_2_workers": [a["seconds"] / b["seconds"] for a, b in zip(one, two)],
             "stage_speedup_2_workers": [2 * busy(b, 2) / busy(a, 1) for a, b in zip(one, two)],
             "task_slowdown_2_workers": [b["task_seconds"] / a["task_seconds"] for a, b in zip(one, two)],
             "busy_share_1_worker": [busy(a, 1) for a in one],
             "busy_share_2_workers": [busy(b, 2) for b in two],
             # the busiest worker's task time over an even half of the total: 1.0 is a perfect split
             "load_imbalance_2_workers": [2 * b["busiest_worker_task_seconds"] / b["task_seconds"] for b in two]}
    out = {}
    for name, values in pairs.items():
        ordered = sorted(values)
        out[name] = ordered[len(ordered) // 2]
        out[f"{name}_range"] = [round(ordered[0], 3), round(ordered[-1], 3)]
    return out


def run(code: str, *args) -> dict:
    return run_child(code, *args)


def google_code(work: Path) -> Path | None:
    """bert-tensorflow 1.0.4 from PyPI, unpacked (no TensorFlow needed for the parts timed here)."""
    wheels = work / "wheels"
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                          "bert-tensorflow==1.0.4"], capture_output=True, text=True)
    wheel = next(wheels.glob("bert_tensorflow-*.whl"), None) if got.returncode == 0 else None
    if wheel is None:
        print(f"bert-tensorflow 1.0.4 could not be downloaded: {got.stderr[-300:]}", file=sys.stderr)
        return None
    target = work / "bert-tensorflow"
    zipfile.ZipFile(wheel).extractall(target)
    return target


def prepare(work: Path, files: list[str], name: str, limit_mb: float) -> tuple[Path, Path, float, int]:
    """Ingest files until the sentences reach `limit_mb`; write google's input format (a sentence per line)."""
    from bert_core.ingest.dedup import DedupConfig
    from bert_core.ingest.corpus import IngestConfig, ingest_corpus, read_ingested

    chosen, size = [], 0.0
    for f in files:
        chosen.append(f)
        size += Path(f).stat().st_size * 2.9 / 1e6  # gzip ratio of these files, refined below
        if size >= limit_mb * 1.1:
            break
    documents = ingest_corpus(IngestConfig(sources=tuple(chosen), validation_fraction=0.1,
                                           dedup=DedupConfig(near=False)), work / name / "documents")
    docs = read_ingested(documents, "train") + read_ingested(documents, "validation")
    text = work / name / "sentences.txt"
    with open(text, "w", encoding="utf-8") as out:
        for doc in docs:
            out.write("\n".join(doc) + "\n\n")
    return documents, text, text.stat().st_size / 1e6, len(docs)


def main() -> None:
    from bert_core.examples.tokenizer import TokenizerConfig, train_tokenizer

    files = sorted(str(p) for p in WIKI.glob("wiki_*.gz"))
    if not files:
        sys.exit(f"shared data not found at {SHARED}; set BERTFLOW_SHARED_DATA")
    work = Path(tempfile.mkdtemp(prefix="bertflow-bench-shards-"))
    try:
        documents, text, megabytes, num_docs = prepare(work, files, "10x", TARGET_MB)
        small_docs, _, small_mb, _ = prepare(work, files, "1x", TARGET_MB / 10)
        sentences = [line for line in text.read_text(encoding="utf-8").splitlines() if line.strip()]
        tokenizer = train_tokenizer(sentences, TokenizerConfig(vocab_size=30522))
        tokenizer.save_pretrained(work / "tokenizer")
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        (work / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in vocab), encoding="utf-8")

        code = google_code(work)
        runs: dict[str, list[dict]] = {}
        for _ in range(REPEATS):  # interleaved, so that a slow spell of the machine hits every tool alike
            runs.setdefault("floor", []).append(run(FLOOR, work / "tokenizer", text))
            for workers in (1, 2):
                shutil.rmtree(work / "out-10x", ignore_errors=True)  # a cold run: tokenization included
                runs.setdefault(f"bertflow_{workers}", []).append(
                    run(BERTFLOW, work / "tokenizer", documents, work / "out-10x" / "examples", workers))
                shutil.rmtree(work / "out-10x", ignore_errors=True)
                runs.setdefault(f"dask_{workers}", []).append(
                    run(DASK, work / "tokenizer", documents, work / "out-10x" / "examples", workers))
                runs.setdefault(f"floor_processes_{workers}", []).append(
                    run(FLOOR_PROCESSES, work / "tokenizer", text, workers))
            shutil.rmtree(work / "out-1x", ignore_errors=True)
            runs.setdefault("bertflow_1x", []).append(
                run(BERTFLOW, work / "tokenizer", small_docs, work / "out-1x" / "examples", 1))
            shutil.rmtree(work / "hf-cache", ignore_errors=True)
            shutil.rmtree(work / "hf-out", ignore_errors=True)
            runs.setdefault("hf", []).append(run(HF, work / "tokenizer", text, work / "hf-cache", work / "hf-out"))
            if code:
                runs.setdefault("google", []).append(run(GOOGLE, code, work / "vocab.txt", text))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {name: median_run(r) for name, r in runs.items()}
    floor, ours, ours_small, hf, google = med["floor"], med["bertflow_1"], med["bertflow_1x"], med["hf"], med.get("google")
    best = min((med["bertflow_1"], med["bertflow_2"], med["dask_2"]), key=lambda r: r["seconds"])
    shard_sets = {tuple(r["shards_sha256"]) for name in ("dask_1", "dask_2") for r in runs[name]}
    rows = {"tokenizer floor (encode_batch)": floor, "bertflow generate_examples, 1 process": ours,
            "bertflow generate_examples, workers=2": med["bertflow_2"],
            "bertflow on Dask, 1 single-threaded worker": med["dask_1"],
            "bertflow on Dask, 2 single-threaded workers": med["dask_2"],
            f"bertflow 1 process on {small_mb:.1f} MB (for RSS growth)": ours_small,
            "HF run_mlm way (map + group_texts)": hf}
    if google:
        rows["google-research/bert create_pretraining_data"] = google
    print(f"\n{megabytes:.1f} MB of sentences, {num_docs} documents, vocab 30,522, seq 128, dupe_factor 1; "
          f"median of {REPEATS} runs each (seconds range in brackets)\n")
    print(f"{'':46s} {'seconds':>8s} {'range':>13s} {'examples':>9s} {'tokens':>10s} {'ex/s':>8s} {'tok/s':>10s} {'RSS MB':>7s}")
    for name, r in rows.items():
        examples = r.get("examples", 0)
        spread = f"[{r['min_seconds']:.1f}-{r['max_seconds']:.1f}]"
        print(f"{name:46s} {r['seconds']:8.2f} {spread:>13s} {examples:9d} {r['tokens']:10d} "
              f"{examples / r['seconds']:8.0f} {r['tokens'] / r['seconds']:10.0f} {r['peak_rss_mb']:7.0f}")
    split = scaling(runs["dask_1"], runs["dask_2"])
    print(f"\nDask, 2 workers over 1, paired per repeat (medians): {split['paired_speedup_2_workers']:.2f}x = "
          f"the stage's own {split['stage_speedup_2_workers']:.2f}x (workers busy {split['busy_share_2_workers']:.0%} "
          f"of the time, against {split['busy_share_1_worker']:.0%} for one; busiest worker "
          f"{split['load_imbalance_2_workers']:.2f}x an even half) / the machine's slowdown of two tasks at once "
          f"{split['task_slowdown_2_workers']:.2f}x")
    result = {
        "sentences_mb": megabytes,
        "repeats": REPEATS,
        "ratio_vs_google": (best["examples"] / best["seconds"]) / (google["examples"] / google["seconds"]) if google else None,
        "ratio_vs_hf": (best["tokens"] / best["seconds"]) / (hf["tokens"] / hf["seconds"]),
        # Both read the same 16 MB of sentences: the share of the tokenizer's own speed the whole stage keeps.
        "fraction_of_tokenizer_floor": floor["seconds"] / best["seconds"],
        "rss_growth_10x": ours["peak_rss_mb"] / ours_small["peak_rss_mb"],
        # 2 single-threaded Dask workers over 1, the stage tokenizing included; beside it the same ratio for the
        # tokenizer alone in 1 and 2 processes: the most two processes get on this machine.
        "speedup_2_workers": med["dask_1"]["seconds"] / med["dask_2"]["seconds"],
        "machine_speedup_2_processes": med["floor_processes_1"]["seconds"] / med["floor_processes_2"]["seconds"],
        **split,
        "dask_2_workers_over_1_process": ours["seconds"] / med["dask_2"]["seconds"],
        "speedup_2_process_pool": ours["seconds"] / med["bertflow_2"]["seconds"],
        "identical_shards_any_workers": len(shard_sets) == 1,
        "bertflow": ours, "bertflow_2_workers": med["bertflow_2"], "dask_1": med["dask_1"], "dask_2": med["dask_2"], "bertflow_1x": {**ours_small, "sentences_mb": small_mb},
        "google": google, "hf": hf, "floor": floor,
        "lddl": "not run: lddl 0.1.0 pins transformers==4.16.2, dask==2021.7.1, mpi4py==3.1.3",
    }
    report("shards", result)


if __name__ == "__main__":
    main()
