"""Rebuild the bundled sample in bert_core/sample_data from ../shared/data.

The sample is what the default pipeline run and the tests read, so it must be small (a few MB), real text, and
reproducible: this script is the record of exactly which slice was taken. Run from the repository root:

    python scripts/make_sample.py --shared ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import shutil
from pathlib import Path

WIKI_FILES = ["wiki_00.gz", "wiki_01.gz"]
BOOK_FILES = ["pg11.txt.gz", "pg35.txt.gz", "pg7256.txt.gz"]  # Alice, The Time Machine, The Gift of the Magi
MRPC_TRAIN_ROWS = 800
SST2_TRAIN_ROWS = 4000
# Extractive QA: whole articles of the SQuAD v1.1 dev set (the only SQuAD split in shared/data), small ones, split
# by article so that no context is in both files.
SQUAD_TRAIN_ARTICLES = ["Normans", "1973_oil_crisis", "Packet_switching", "Black_Death"]
SQUAD_DEV_ARTICLES = ["Sky_(United_Kingdom)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("bert_core/sample_data"))
    args = parser.parse_args()

    corpus = args.out / "corpus"
    (corpus / "wikipedia").mkdir(parents=True, exist_ok=True)
    (corpus / "books").mkdir(parents=True, exist_ok=True)
    for name in WIKI_FILES:
        shutil.copyfile(args.shared / "corpus/wikipedia/enwiki_2015_extract/AA" / name, corpus / "wikipedia" / name)
    for name in BOOK_FILES:
        shutil.copyfile(args.shared / "corpus/books/gutenberg" / name, corpus / "books" / name)

    sst2 = args.out / "sst2"
    sst2.mkdir(parents=True, exist_ok=True)
    with open(args.shared / "tasks/sst2/train.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    random.Random(0).shuffle(body)
    with open(sst2 / "train.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n", escapechar="\\")
        writer.writerow(header)
        writer.writerows(body[:SST2_TRAIN_ROWS])
    shutil.copyfile(args.shared / "tasks/sst2/dev.tsv", sst2 / "dev.tsv")

    # MRPC (sentence pairs): a seeded subset of train lines, copied byte for byte, and the whole dev set.
    mrpc = args.out / "mrpc"
    mrpc.mkdir(parents=True, exist_ok=True)
    lines = (args.shared / "tasks/mrpc/train.tsv").read_bytes().splitlines(keepends=True)
    head, body = lines[0], lines[1:]
    random.Random(0).shuffle(body)
    (mrpc / "train.tsv").write_bytes(head + b"".join(body[:MRPC_TRAIN_ROWS]))
    shutil.copyfile(args.shared / "tasks/mrpc/dev.tsv", mrpc / "dev.tsv")

    # SQuAD: chosen articles, unchanged, as gzipped SQuAD JSON (mtime 0: the same bytes on every rebuild).
    squad = args.out / "squad"
    squad.mkdir(parents=True, exist_ok=True)
    source = json.loads((args.shared / "tasks/squad_v1.1/dev-v1.1.json").read_text(encoding="utf-8"))
    articles = {a["title"]: a for a in source["data"]}
    for name, titles in (("train", SQUAD_TRAIN_ARTICLES), ("dev", SQUAD_DEV_ARTICLES)):
        document = {"version": source["version"], "data": [articles[t] for t in titles]}
        with gzip.GzipFile(squad / f"{name}.json.gz", "wb", mtime=0) as f:
            f.write(json.dumps(document, ensure_ascii=False).encode("utf-8"))


if __name__ == "__main__":
    main()
