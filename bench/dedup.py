"""Benchmark of near dedup at corpus scale. Run with no arguments: `python bench/dedup.py` (under a minute on a
2-core Intel Xeon with AMX, 2026-12-03).

A synthetic corpus of S x the shared Wikipedia extract (its 1,791 articles of 50+ words, each cut to its first 500
words so that the signature pass stays short; the dedup stage's memory does not depend on document length), built
on the fly and never written to the repository: copy 0 is the articles as they are; copies 1..S are every article
with its words replaced at rate 0.5% or 1% (planted near duplicates: 5-word-shingle Jaccard ~0.95 / ~0.91 to the
original) or 15% or 30% (different documents, Jaccard ~0.3 / ~0.1), by turns; so S x the extract plus one copy
(1x: the articles and their 0.5% copies). Signatures (bertflow's MinHash, 128 permutations) are
computed first, one .npy per copy; then, each in a fresh process (time and peak RSS):
- bertflow `near_dedup.near_duplicates` (bands sorted on disk) at S = 1, 10 and 100, and with 2 worker processes
  at S = 100 (same result required);
- the in-memory greedy index (`dedup.NearDuplicateIndex`, datasketch MinHashLSH + one signature per kept document)
  at S = 1, 10 and 100.
Reports peak RSS growth from 10x to 100x (goal <= 1.2x for bertflow), precision and recall on the planted duplicates
for both, and whether the two agree at 1x. Writes bench/results/dedup.json and prints one JSON object last.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from child import report, run_child  # noqa: E402

SHARED = Path(os.environ.get("BERTFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
WIKI = SHARED / "corpus" / "wikipedia" / "enwiki_2015_extract" / "AA"
SCALES = (1, 10, 100)
RATES = (0.005, 0.01, 0.15, 0.3)  # copy c > 0 edits at RATES[(c - 1) % 4]
NEAR_RATE = 0.1  # rates below are planted near duplicates
WORDS = 500

BERTFLOW = r"""
import json, sys, time
from pathlib import Path
from bert_core import stage
from bert_core.ingest import near_dedup
work, n, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
parts = [{"signatures_file": str(work / f"sig-{c:04d}.npy"), "eligible_file": str(work / f"ok-{c:04d}.npy")}
         for c in range(n)]
start = time.perf_counter()
with stage.worker_pool(workers, preload=["bert_core.ingest.near_dedup"]) as pool:
    found = near_dedup.near_duplicates(parts, threshold=0.8, num_perm=128, work_dir=Path(sys.argv[4]), executor=pool)
seconds = time.perf_counter() - start
Path(sys.argv[5]).write_bytes(found.astype("uint64").tobytes())
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb(), "found": int(found.size)}))
"""

IN_MEMORY = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from bert_core.ingest.dedup import DedupConfig, NearDuplicateIndex
work, n = Path(sys.argv[1]), int(sys.argv[2])
index, found, ordinal = NearDuplicateIndex(DedupConfig()), [], 0
start = time.perf_counter()
for c in range(n):
    for signature in np.load(work / f"sig-{c:04d}.npy"):
        if index.seen_before(str(ordinal), signature):
            found.append(ordinal)
        ordinal += 1
seconds = time.perf_counter() - start
Path(sys.argv[3]).write_bytes(np.asarray(found, dtype=np.uint64).tobytes())
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb(), "found": len(found)}))
"""


def base_documents() -> list[np.ndarray]:
    """Word hashes of the extract's articles (first WORDS words), as bertflow's dedup normalises them."""
    from bert_core.ingest.sources import ReadConfig, read_unit
    from bert_core.ingest.dedup import normalized_words, word_hashes

    docs = []
    for path in sorted(WIKI.glob("wiki_*.gz")):
        for doc in read_unit(str(path), ReadConfig()):
            if doc.error or doc.skip:
                continue
            hashes = word_hashes(normalized_words(doc.text)[:WORDS])
            if hashes.size >= 50:
                docs.append(hashes)
    return docs


def edited(base: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of a document's word hashes with each word replaced by a random one at `rate`."""
    doc = base.copy()
    edit = rng.random(doc.size) < rate
    doc[edit] = rng.integers(1, 2**63, size=int(edit.sum()), dtype=np.uint64)
    return doc


def write_copies(work: Path, docs: list[np.ndarray], copies: int) -> set[int]:
    """One signature file per copy; returns the planted near duplicates' ordinals."""
    from bert_core.ingest.dedup import DedupConfig, minhash_signature

    config, planted = DedupConfig(), set()
    for c in range(copies):
        rng = np.random.default_rng(c)
        rate = 0.0 if c == 0 else RATES[(c - 1) % len(RATES)]
        rows = []
        for d, base in enumerate(docs):
            rows.append(minhash_signature(edited(base, rate, rng), config))
            if 0 < rate < NEAR_RATE:
                planted.add(c * len(docs) + d)
        np.save(work / f"sig-{c:04d}.npy", np.stack(rows))
        np.save(work / f"ok-{c:04d}.npy", np.ones(len(rows), dtype=bool))
    return planted


def scores(found: set[int], planted: set[int], total: int) -> dict:
    true = len(found & planted)
    return {"found": len(found), "planted": len(planted), "documents": total,
            "precision": true / len(found) if found else 1.0, "recall": true / len(planted) if planted else 1.0}


def compare_minhash_libraries(docs: list[np.ndarray], repeats: int = 3) -> dict:
    """Signatures of the same shingles by datasketch (`dedup.minhash_signature` with minhash="datasketch", one
    document at a time) and by rensa (`RMinHash`, Rust, the whole batch in one call; the stage's default calls it
    per document), on the articles and one copy
    of each at every rate of RATES: seconds (median of `repeats`), and per rate the share of (article, copy) pairs
    that the stage would call near duplicates (signatures agreeing on >= 80% of positions) and that its 9 x 13 LSH
    bands would make candidates (any band equal). Recall is that share at 0.5% and 1% edits; at 15% and 30% it is
    the false-positive rate."""
    import rensa

    from bert_core.ingest.dedup import DedupConfig, minhash_signature, ngram_hashes
    from bert_core.ingest.near_dedup import band_parameters

    config = DedupConfig()
    bands, rows = band_parameters(config.near_dedup_threshold, config.num_perm)
    copies = [docs]
    for c, rate in enumerate(RATES, start=1):
        rng = np.random.default_rng(c)
        copies.append([edited(base, rate, rng) for base in docs])
    shingles = [ngram_hashes(doc, config.shingle_size) for copy in copies for doc in copy]
    flat = np.concatenate(shingles)
    offsets = np.concatenate([[0], np.cumsum([s.size for s in shingles])]).astype(np.uint64)

    def datasketch_all() -> np.ndarray:
        slow = DedupConfig(minhash="datasketch")
        return np.stack([minhash_signature(doc, slow) for copy in copies for doc in copy])

    def rensa_all() -> np.ndarray:
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, config.num_perm, config.seed)
        return np.asarray(matrix.to_rows(), dtype=np.uint64)

    result = {"signatures": len(shingles), "shingles": int(flat.size), "bands": bands, "rows_per_band": rows}
    for name, compute in (("datasketch", datasketch_all), ("rensa", rensa_all)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            signatures = compute()
            times.append(time.perf_counter() - start)
        n = len(docs)
        original = signatures[:n]
        per_rate = {}
        for c, rate in enumerate(RATES, start=1):
            copy = signatures[c * n:(c + 1) * n]
            agree = (original == copy).mean(axis=1)
            candidate = np.zeros(n, dtype=bool)
            for k in range(bands):
                candidate |= (original[:, k * rows:(k + 1) * rows] == copy[:, k * rows:(k + 1) * rows]).all(axis=1)
            per_rate[f"{rate:g}"] = {"near_duplicate": float((agree >= config.near_dedup_threshold).mean()),
                                     "lsh_candidate": float(candidate.mean()), "mean_agreement": float(agree.mean())}
        result[name] = {"seconds": sorted(times)[len(times) // 2], "runs": times, "by_edit_rate": per_rate}
    result["rensa_speedup"] = result["datasketch"]["seconds"] / result["rensa"]["seconds"]
    return result


def main() -> None:
    if not WIKI.is_dir():
        sys.exit(f"shared data not found at {SHARED}; set BERTFLOW_SHARED_DATA")
    if sys.argv[1:] == ["minhash"]:  # only the signature libraries (about a minute)
        minhash = compare_minhash_libraries(base_documents())
        print(f"\n{minhash['signatures']} signatures of {minhash['shingles']} shingles, {minhash['bands']} bands "
              f"of {minhash['rows_per_band']}\n")
        print(f"{'library':12s} {'seconds':>8s}  near duplicate / LSH candidate share per edit rate")
        for name in ("datasketch", "rensa"):
            r = minhash[name]
            shares = "  ".join(f"{rate}: {v['near_duplicate']:.3f}/{v['lsh_candidate']:.3f}"
                               for rate, v in r["by_edit_rate"].items())
            print(f"{name:12s} {r['seconds']:8.2f}  {shares}")
        print(f"rensa / datasketch speed: {minhash['rensa_speedup']:.1f}x")
        report("dedup-minhash", minhash)
        return
    work = Path(tempfile.mkdtemp(prefix="bertflow-bench-dedup-"))
    try:
        started = time.perf_counter()
        docs = base_documents()
        planted = write_copies(work, docs, max(SCALES) + 1)
        signing = time.perf_counter() - started
        results = {}
        for scale in SCALES:
            copies = scale + 1
            total = copies * len(docs)
            truth = {p for p in planted if p < total}
            for name, code, args in (("bertflow", BERTFLOW, (1,)), ("in_memory", IN_MEMORY, ())):
                out = work / f"found-{name}-{scale}.bin"
                if name == "bertflow":
                    shutil.rmtree(work / "bands", ignore_errors=True)
                    args = (*args, work / "bands", out)
                else:
                    args = (out,)
                run = run_child(code, work, copies, *args)
                found = set(np.frombuffer(out.read_bytes(), dtype=np.uint64).tolist())
                results[f"{name}_{scale}x"] = {**run, **scores(found, truth, total)}
                results[f"{name}_{scale}x"]["_found"] = found
        shutil.rmtree(work / "bands", ignore_errors=True)
        two = run_child(BERTFLOW, work, max(SCALES) + 1, 2, work / "bands", work / "found-2w.bin")
        two_found = set(np.frombuffer((work / "found-2w.bin").read_bytes(), dtype=np.uint64).tolist())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    same_workers = two_found == results[f"bertflow_{max(SCALES)}x"]["_found"]
    agree_1x = results["bertflow_1x"]["_found"] == results["in_memory_1x"]["_found"]
    print(f"\n{len(docs)} articles (first {WORDS} words), 1 + 1/10/100 copies; signatures {signing:.0f} s "
          "(not timed below)\n")
    print(f"{'':22s} {'documents':>9s} {'seconds':>8s} {'peak RSS MB':>11s} {'found':>7s} {'precision':>9s} {'recall':>7s}")
    for name, r in results.items():
        print(f"{name:22s} {r['documents']:9d} {r['seconds']:8.1f} {r['peak_rss_mb']:11.0f} {r['found']:7d} "
              f"{r['precision']:9.4f} {r['recall']:7.4f}")
    print(f"bertflow {max(SCALES)}x on 2 workers: {two['seconds']:.1f} s, same result: {same_workers}")
    for r in results.values():
        r.pop("_found")
    result = {
        "articles": len(docs), "words_per_article": WORDS, "signature_seconds": signing,
        "rss_growth_10x_to_100x": results["bertflow_100x"]["peak_rss_mb"] / results["bertflow_10x"]["peak_rss_mb"],
        "in_memory_rss_growth_10x_to_100x": (results["in_memory_100x"]["peak_rss_mb"]
                                             / results["in_memory_10x"]["peak_rss_mb"]),
        "precision_100x": results["bertflow_100x"]["precision"], "recall_100x": results["bertflow_100x"]["recall"],
        "same_result_2_workers": same_workers, "same_result_as_in_memory_1x": agree_1x,
        "speedup_2_workers_100x": results["bertflow_100x"]["seconds"] / two["seconds"],
        "in_memory_over_bertflow_seconds_100x": results["in_memory_100x"]["seconds"] / results["bertflow_100x"]["seconds"],
        "results": results, "two_workers_100x": two,
    }
    report("dedup", result)


if __name__ == "__main__":
    main()
