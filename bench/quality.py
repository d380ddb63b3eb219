"""What the Gopher/C4-style quality filters (`bert_core.ingest.filters`) drop from real text, and what they cost. Run with
no arguments: `python bench/quality.py` (about 2 minutes on one core).

Reads ../shared/data (BERTFLOW_SHARED_DATA): the Wikipedia extract, the Gutenberg books and IMDb's training reviews,
plus the repository's multilingual test documents (nine UDHR translations). Every document goes through
`cleaning.clean_document` with the filters off, with both on, and with the defaults (non-prose on, repetition off);
the table gives, per source, the documents the baseline keeps, the share of them each rule rejects with both on and
the share the defaults reject, with the first rejected documents of each rule (id and opening words) so that a
person can judge them, and the cleaning seconds of each setting.

Prints tables, writes bench/results/quality.json and prints one JSON object as its last line.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from child import report  # noqa: E402

SHARED = Path(os.environ.get("BERTFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCES = {
    "wikipedia": SHARED / "corpus" / "wikipedia" / "enwiki_2015_extract",
    "books": SHARED / "corpus" / "books" / "gutenberg",
    "imdb": SHARED / "tasks" / "imdb" / "train.jsonl.gz",
    "multilingual": REPO / "tests" / "data" / "multilingual",
}


def main() -> None:
    from bert_core.ingest.cleaning import CleaningConfig, clean_document
    from bert_core.ingest.sources import read_documents

    base = CleaningConfig(repetition_filter=False, prose_filter=False)
    filtered = replace(base, repetition_filter=True, prose_filter=True)
    default = CleaningConfig()
    rows, examples, seconds = [], {}, {"off": 0.0, "on": 0.0, "default": 0.0}
    for name, path in SOURCES.items():
        if not path.exists():
            print(f"{name}: {path} not found, skipped")
            continue
        kept, reasons, by_default = 0, Counter(), 0
        for doc in read_documents(str(path)):
            start = time.perf_counter()
            clean, why = clean_document(doc, base)
            seconds["off"] += time.perf_counter() - start
            if clean is None:
                continue
            kept += 1
            start = time.perf_counter()
            _, why = clean_document(doc, filtered)
            seconds["on"] += time.perf_counter() - start
            if why:
                reasons[why] += 1
                examples.setdefault(why, []).append(f"{name}:{doc.id}: {' '.join(doc.text.split()[:18])}")
            start = time.perf_counter()
            by_default += clean_document(doc, default)[0] is None
            seconds["default"] += time.perf_counter() - start
        rows.append({"source": name, "kept_without_filters": kept, "rejected": dict(reasons),
                     "rejected_share": sum(reasons.values()) / kept if kept else 0.0,
                     "rejected_by_defaults": by_default, "rejected_share_defaults": by_default / kept if kept else 0.0})

    print(f"\n{'source':14s} {'kept (off)':>10s} {'dropped (on)':>13s} {'(defaults)':>11s}  by rule (on)")
    for row in rows:
        rules = ", ".join(f"{k} {v}" for k, v in sorted(row["rejected"].items())) or "-"
        print(f"{row['source']:14s} {row['kept_without_filters']:10d} {row['rejected_share']:12.2%} "
              f"{row['rejected_share_defaults']:10.2%}  {rules}")
    print(f"\ncleaning seconds: filters off {seconds['off']:.1f}, both on {seconds['on']:.1f}, "
          f"defaults {seconds['default']:.1f}")
    for reason, docs in sorted(examples.items()):
        print(f"\n{reason} ({len(docs)}):")
        for line in docs[:4]:
            print("   ", line[:160])
    total = sum(r["kept_without_filters"] for r in rows)
    report("quality", {
        "documents_kept_without_filters": total,
        "dropped_share": sum(sum(r["rejected"].values()) for r in rows) / total if total else 0.0,
        "dropped_share_defaults": sum(r["rejected_by_defaults"] for r in rows) / total if total else 0.0,
        **{f"dropped_share_{r['source']}": r["rejected_share"] for r in rows},
        **{f"dropped_share_defaults_{r['source']}": r["rejected_share_defaults"] for r in rows},
        "seconds_filters_off": seconds["off"], "seconds_filters_on": seconds["on"],
        "seconds_defaults": seconds["default"],
        "sources": rows, "examples": {k: v[:10] for k, v in examples.items()},
    })


if __name__ == "__main__":
    main()
