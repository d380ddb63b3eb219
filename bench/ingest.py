"""Benchmark of the ingest stage. Run with no arguments: `python bench/ingest.py` (about 3-6 minutes on 2 cores).

Reads the team's real data in ../shared/data (override with BERTFLOW_SHARED_DATA):
1. Sentence splitters on gold boundaries: CoNLL-2003 validation sentences (Reuters news), detokenised and joined
   into paragraphs of up to 5 sentences; paragraph exact-match accuracy, boundary F1 and MB/s for bertflow's regex
   splitter, Bling Fire (the default), and syntok / pysbd when installed.
2. Throughput: the whole ingest stage (clean, split, MinHash, exact + near dedup, decontamination against SST-2
   and MRPC dev) in one process on 30 MB of Wikipedia (WikiExtractor files), against the Hugging Face way on the
   same files (`datasets` text loader by paragraph + `map` with the same sentence splitter, no dedup).
3. Memory: peak RSS of the stage at 1x (3 files) and 10x (30 files) input, each in a fresh process.
4. Parallelism: the ingest flow's per-file step on a Dask cluster of 1 and of 2 worker processes, on fresh
   workers ("cold", imports included) and again on the same workers ("warm", as on a long-lived scheduler).
Prints a table, writes bench/results/ingest.json, and prints one JSON object as its last line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import child  # noqa: E402
SHARED = Path(os.environ.get("BERTFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
WIKI = SHARED / "corpus" / "wikipedia" / "enwiki_2015_extract" / "AA"
DECONTAMINATE = (str(SHARED / "tasks" / "sst2" / "dev.tsv"),
                 str(SHARED / "tasks" / "mrpc" / "dev.tsv") + "::#1 String,#2 String")


def _detok(tokens: list[str]) -> str:
    text = " ".join(tokens)
    text = re.sub(r" ([.,;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{$]) ", r"\1", text)
    return re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)


def gold_paragraphs() -> list[list[str]]:
    docs, doc, sentence = [], [], []
    for line in open(SHARED / "tasks" / "conll2003" / "valid.txt", encoding="utf-8"):
        line = line.strip()
        if line.startswith("-DOCSTART-"):
            if doc:
                docs.append(doc)
            doc = []
        elif not line:
            if sentence:
                doc.append(sentence)
            sentence = []
        else:
            sentence.append(line.split()[0])
    if doc:
        docs.append(doc)
    paragraphs = []
    for d in docs:
        # Sentences with a terminal mark, not headlines or datelines (upper-case openings).
        good = [_detok(s) for s in d if len(s) >= 4 and s[-1] in ".!?" and not any(t.isupper() and len(t) > 3 for t in s[:3])]
        paragraphs += [good[i : i + 5] for i in range(0, len(good), 5) if len(good[i : i + 5]) >= 2]
    return paragraphs


def _boundaries(sentences: list[str]) -> set[int]:
    positions, offset = set(), 0
    for s in sentences[:-1]:
        offset += len(s.replace(" ", ""))
        positions.add(offset)
    return positions


def compare_splitters() -> list[dict]:
    from bert_core.ingest.cleaning import split_sentences

    paragraphs = gold_paragraphs()
    splitters = {"regex (bertflow fallback)": lambda t: split_sentences(t, splitter="regex"),
                 "blingfire (bertflow default)": lambda t: split_sentences(t, splitter="blingfire")}
    try:
        from syntok import segmenter

        splitters["syntok"] = lambda t: ["".join(tok.spacing + tok.value for tok in s).strip()
                                         for p in segmenter.analyze(t) for s in p]
    except ImportError:
        pass
    try:
        import pysbd

        seg = pysbd.Segmenter(language="en", clean=False)
        splitters["pysbd"] = lambda t: [s.strip() for s in seg.segment(t)]
    except ImportError:
        pass
    rows = []
    for name, split in splitters.items():
        split("Warm up. Load the model first.")  # one-time library loading is not splitting speed
        exact = tp = fp = fn = 0
        size = 0
        seconds = 0.0
        for p in paragraphs:
            text = " ".join(p)
            size += len(text.encode())
            start = time.perf_counter()
            predicted = [s.strip() for s in split(text) if s.strip()]
            seconds += time.perf_counter() - start
            exact += predicted == p
            gold, got = _boundaries(p), _boundaries(predicted)
            tp, fp, fn = tp + len(gold & got), fp + len(got - gold), fn + len(gold - got)
        rows.append({"splitter": name, "paragraph_exact": exact / len(paragraphs),
                     "boundary_f1": 2 * tp / max(1, 2 * tp + fp + fn), "mb_per_s": size / seconds / 1e6})
    rows.append({"splitter": f"(gold: {len(paragraphs)} paragraphs, {sum(map(len, paragraphs))} sentences)",
                 "paragraph_exact": None, "boundary_f1": None, "mb_per_s": None})
    return rows


CHILD = r"""
import json, resource, sys, time
from bert_core.ingest.corpus import IngestConfig, ingest_corpus
from bert_core.ingest.cleaning import CleaningConfig
from bert_core.ingest.dedup import DedupConfig
files, out, decon = json.loads(sys.argv[1]), sys.argv[2], tuple(json.loads(sys.argv[3]))
cleaning = CleaningConfig(**json.loads(sys.argv[4] if len(sys.argv) > 4 else "{}"))
dedup = DedupConfig() if decon else DedupConfig(exact=False, near=False)
start = time.perf_counter()
ingest_corpus(IngestConfig(sources=tuple(files), decontamination_files=decon, dedup=dedup, cleaning=cleaning), out)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mb": peak_mb()}))
"""

HF_CHILD = r"""
import json, sys, time
start = time.perf_counter()
import datasets
from bert_core.ingest.cleaning import split_sentences
files, cache = json.loads(sys.argv[1]), sys.argv[2]
ds = datasets.load_dataset("text", data_files=files, sample_by="paragraph", split="train", cache_dir=cache)
ds = ds.map(lambda batch: {"sentences": [split_sentences(t) for t in batch["text"]]}, batched=True, num_proc=1)
print(json.dumps({"seconds": time.perf_counter() - start, "rows": len(ds)}))
"""


DATATROVE_CHILD = r"""
import runpy, sys
sys.argv = ["bench/datatrove_ingest.py", *sys.argv[1:]]
runpy.run_path("bench/datatrove_ingest.py", run_name="__main__")
"""


def run_child(code: str, *args: str) -> dict:
    return child.run_child(code, *args, env={"OMP_NUM_THREADS": "1"})


def measure_dask(files: list[str], workdir: Path) -> dict:
    """Per-file step of the ingest flow on an existing Dask cluster of 1 and 2 workers (startup excluded)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect_dask import DaskTaskRunner

    from bert_core import stage
    from bert_core.ingest.corpus import IngestConfig
    from flows.ingest import process_inputs_flow

    config = stage.to_jsonable(IngestConfig(sources=tuple(files), decontamination_files=DECONTAMINATE))

    @flow(name="bench-ingest-dask")
    def bench() -> dict:
        with get_client(sync_client=True) as client:
            api = str(client.api_url).rstrip("/")
        times: dict[str, list[float]] = {}
        for workers in (1, 2, 1, 2):
            with stage.local_data_cluster(workers, env={"PREFECT_API_URL": api}) as cluster:  # the pipeline's
                runner = DaskTaskRunner(address=cluster.scheduler_address)
                for state in ("cold", "warm"):
                    # "cold": fresh worker processes pay their imports (Prefect engine, pyarrow, datasketch...);
                    # "warm": the same cluster again, as a long-lived scheduler that users point at would be.
                    parts = workdir / f"parts-{workers}-{time.perf_counter_ns()}"
                    start = time.perf_counter()
                    process_inputs_flow.with_options(task_runner=runner)(files, config, str(parts),
                                                                         num_batches=4 * workers)
                    times.setdefault(f"{state}{workers}", []).append(time.perf_counter() - start)
        return {k: min(v) for k, v in times.items()}

    t = bench()
    return {"dask_1_worker_s": t["warm1"], "dask_2_workers_s": t["warm2"],
            "dask_speedup_2_workers": t["warm1"] / t["warm2"],
            "dask_cold_1_worker_s": t["cold1"], "dask_cold_2_workers_s": t["cold2"],
            "dask_speedup_2_workers_cold": t["cold1"] / t["cold2"]}


def compare_datatrove(files: list[str], work: Path, repeats: int = 3) -> dict:
    """bertflow's ingest with the Gopher-style filters on against datatrove's pipeline doing the same kind of work
    (bench/datatrove_ingest.py), each in a fresh one-thread process, alternating; medians of `repeats`."""
    import pyarrow.parquet as pq

    if importlib.util.find_spec("datatrove") is None:
        return {"datatrove": "not installed: pip install -e '.[bench]'"}
    filters = json.dumps({"repetition_filter": True, "prose_filter": True})
    ours, theirs = [], []
    for i in range(repeats):
        out = work / f"dt-bertflow-{i}" / "out"
        ours.append(run_child(CHILD, json.dumps(files), str(out), json.dumps(DECONTAMINATE), filters))
        theirs.append(run_child(DATATROVE_CHILD, json.dumps(files), str(work / f"dt-datatrove-{i}")))
    manifest = json.loads((out / "manifest.json").read_text())
    kept = {row for shard in manifest["shards"] for row in pq.read_table(out / shard, columns=["doc_id"])["doc_id"]
            .to_pylist()}
    dt_kept = set(theirs[-1]["kept_ids"])
    ours_s, theirs_s = (statistics.median(r["seconds"] for r in runs) for runs in (ours, theirs))
    rejected = manifest["documents_rejected"]
    return {"bertflow_filtered_seconds": ours_s, "datatrove_seconds": theirs_s,
            "ratio_vs_datatrove": theirs_s / ours_s,
            "datatrove_filter_seconds": statistics.median(r["filter_seconds"] for r in theirs),
            "datatrove_dedup_seconds": statistics.median(r["dedup_seconds"] for r in theirs),
            "datatrove_repeats": repeats,
            "bertflow_near_duplicates": rejected.get("near_duplicate", 0),
            "bertflow_exact_duplicates": rejected.get("exact_duplicate", 0),
            "bertflow_rejected": rejected,
            "datatrove_passed_filters": theirs[-1]["documents_passed_filters"],
            "datatrove_near_duplicates": theirs[-1]["near_duplicates_removed"],
            "kept_by_both": len(kept & dt_kept), "kept_only_by_bertflow": len(kept - dt_kept),
            "kept_only_by_datatrove": len(dt_kept - kept),
            "examples_kept_only_by_datatrove": sorted(dt_kept - kept)[:10],
            "examples_kept_only_by_bertflow": sorted(kept - dt_kept)[:10]}


def main() -> None:
    if not WIKI.is_dir():
        sys.exit(f"shared data not found at {SHARED}; set BERTFLOW_SHARED_DATA")
    files = sorted(str(p) for p in WIKI.glob("wiki_*.gz"))
    megabytes = lambda fs: sum(len(__import__("gzip").open(f).read()) for f in fs) / 1e6  # noqa: E731
    one_x, ten_x = files[:3], files[:30]
    results: dict = {"input_mb_1x": megabytes(one_x), "input_mb_10x": megabytes(ten_x)}
    work = Path(tempfile.mkdtemp(prefix="bertflow-bench-ingest-"))
    if sys.argv[1:] == ["datatrove"]:  # only the datatrove comparison (about 5 minutes)
        try:
            results.update(compare_datatrove(ten_x, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print_datatrove(results)
        child.report("ingest-datatrove", results)
        return
    try:
        splitters = compare_splitters()
        small = run_child(CHILD, json.dumps(one_x), str(work / "1x" / "out"), json.dumps(DECONTAMINATE))
        big = run_child(CHILD, json.dumps(ten_x), str(work / "10x" / "out"), json.dumps(DECONTAMINATE))
        plain = run_child(CHILD, json.dumps(ten_x), str(work / "10x-plain" / "out"), json.dumps([]))
        hf = run_child(HF_CHILD, json.dumps(ten_x), str(work / "hf-cache"))
        manifest = json.loads((work / "10x" / "out" / "manifest.json").read_text())
        results.update({
            "seconds_10x": big["seconds"],
            "mb_per_s_per_core": results["input_mb_10x"] / big["seconds"],
            "hf_datasets_split_seconds_10x": hf["seconds"],
            "ratio_vs_hf_datasets_split": hf["seconds"] / big["seconds"],
            "seconds_10x_without_dedup": plain["seconds"],
            "ratio_vs_hf_datasets_split_without_dedup": hf["seconds"] / plain["seconds"],
            "peak_rss_mb_1x": small["peak_rss_mb"],
            "peak_rss_mb_10x": big["peak_rss_mb"],
            "rss_growth_10x": big["peak_rss_mb"] / small["peak_rss_mb"],
            "documents_read_10x": manifest["documents_read"],
            "documents_kept_10x": manifest["documents_kept"],
            "documents_rejected_10x": manifest["documents_rejected"],
        })
        results.update(measure_dask(ten_x, work))
        results.update(compare_datatrove(ten_x, work))
        results["splitters"] = splitters
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'sentence splitter':32s} {'para exact':>10s} {'bound. F1':>10s} {'MB/s':>8s}")
    for row in splitters:
        if row["mb_per_s"] is None:
            print(row["splitter"])
        else:
            print(f"{row['splitter']:32s} {row['paragraph_exact']:10.3f} {row['boundary_f1']:10.3f} {row['mb_per_s']:8.2f}")
    print(f"\n{'ingest (30 MB Wikipedia)':40s} value")
    for key in ("input_mb_10x", "seconds_10x", "mb_per_s_per_core", "hf_datasets_split_seconds_10x",
                "ratio_vs_hf_datasets_split", "seconds_10x_without_dedup", "ratio_vs_hf_datasets_split_without_dedup",
                "peak_rss_mb_1x", "peak_rss_mb_10x", "rss_growth_10x",
                "dask_1_worker_s", "dask_2_workers_s", "dask_speedup_2_workers", "dask_cold_1_worker_s",
                "dask_cold_2_workers_s", "dask_speedup_2_workers_cold", "documents_read_10x",
                "documents_kept_10x"):
        value = results[key]
        print(f"{key:40s} {value:.3f}" if isinstance(value, float) else f"{key:40s} {value}")
    print_datatrove(results)
    child.report("ingest", results)


def print_datatrove(results: dict) -> None:
    print(f"\n{'against datatrove (30 MB, filters on, 1 core)':48s} value")
    for key in ("bertflow_filtered_seconds", "datatrove_seconds", "ratio_vs_datatrove", "datatrove_filter_seconds",
                "datatrove_dedup_seconds", "bertflow_near_duplicates", "bertflow_exact_duplicates",
                "datatrove_passed_filters", "datatrove_near_duplicates", "kept_by_both", "kept_only_by_bertflow",
                "kept_only_by_datatrove", "datatrove"):
        if key in results:
            value = results[key]
            print(f"{key:48s} {value:.3f}" if isinstance(value, float) else f"{key:48s} {value}")


if __name__ == "__main__":
    main()
