import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bert_core.ingest.cleaning import CleaningConfig
from bert_core.ingest.corpus import IngestConfig, ingest_corpus, parts_dir_for, read_ingested
from tests.ingest.test_sources import PARAGRAPH, write_corpus


def _config(root, **kw):
    return IngestConfig(sources=(str(root),), validation_fraction=0.3, seed=1, cleaning=CleaningConfig(min_chars=50),
                        **kw)


def test_ingest_accounts_for_every_document_and_is_idempotent(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    out = ingest_corpus(_config(root), tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents_read"] == 13
    assert manifest["documents_read"] == manifest["documents_kept"] + sum(manifest["documents_rejected"].values())
    assert manifest["documents_rejected"] == {"bad_json_record": 1, "missing_text_field": 1, "text_not_a_string": 1,
                                              "binary_file": 1, "exact_duplicate": 1, "empty": 1, "too_short": 1,
                                              "near_duplicate": 2}
    problems = {(Path(p["path"]).name, p["problem"]): p["count"] for p in manifest["problem_files"]}
    assert problems == {("a.jsonl", "bad_json_record"): 1, ("a.jsonl", "missing_text_field"): 1,
                        ("b.parquet", "text_not_a_string"): 1, ("bad.txt", "binary_file"): 1}
    assert manifest["documents_per_encoding"] == {"utf-8": 9}  # every record that had text to decode
    # b.parquet (4x) and c.txt.gz (5x) repeat a.jsonl's paragraph (3x): near duplicates; wiki:7 is an exact copy.
    train, validation = read_ingested(out, "train"), read_ingested(out, "validation")
    assert len(train) + len(validation) == manifest["documents_kept"] == 4
    per_source = manifest["per_source"][str(root)]
    assert per_source["read"] == 13 and per_source["kept"] == 4
    assert sum(c for _, c in manifest["document_characters_histogram"]) == 4
    record = (out / "stage.json").stat().st_mtime_ns
    ingest_corpus(_config(root), tmp_path / "out")
    assert (out / "stage.json").stat().st_mtime_ns == record  # skipped: same inputs, same config
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary leftovers


def test_only_changed_inputs_are_reprocessed(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    ingest_corpus(_config(root), tmp_path / "out")
    parts = parts_dir_for(tmp_path / "out")
    before = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.json")}
    (root / "new.txt").write_text("A brand new source arrives today. It has two sentences and more words. " * 3)
    manifest = json.loads((ingest_corpus(_config(root), tmp_path / "out") / "manifest.json").read_text())
    after = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.json")}
    assert len(after) == len(before) + 1
    assert all(after[name] == mtime for name, mtime in before.items())  # old parts reused, not rewritten
    assert manifest["documents_read"] == 14 and manifest["documents_kept"] == 5


def test_a_crash_leaves_no_part_and_the_rerun_finishes(tmp_path, monkeypatch):
    from bert_core.ingest import corpus

    root = write_corpus(tmp_path / "corpus")
    real = corpus.clean_document
    calls = {"n": 0}

    def flaky(doc, config):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("worker died")
        return real(doc, config)

    monkeypatch.setattr(corpus, "clean_document", flaky)
    with pytest.raises(RuntimeError):
        ingest_corpus(_config(root), tmp_path / "out")
    finished = list(parts_dir_for(tmp_path / "out").glob("part-*.json"))
    assert not (tmp_path / "out").exists() and len(finished) >= 1
    monkeypatch.setattr(corpus, "clean_document", real)
    manifest = json.loads((ingest_corpus(_config(root), tmp_path / "out") / "manifest.json").read_text())
    assert manifest["documents_read"] == 13


def test_decontamination_removes_documents_that_contain_eval_text(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    leak = "the acting , costumes , music , cinematography and sound are all astounding given the production 's austere locales ."  # SST-2 dev
    (root / "clean.txt").write_text(PARAGRAPH * 4)
    (root / "clean2.txt").write_text("Completely different words about mountains and rivers. " * 8)
    (root / "leaky.txt").write_text("A review: the acting, costumes, music, cinematography and sound are all astounding "
                                    "given the production's austere locales. " + "Other words here. " * 20)
    evals = tmp_path / "dev.tsv"
    evals.write_text(f"sentence\tlabel\n{leak} \t1\n")
    manifest = json.loads((ingest_corpus(_config(root, decontamination_files=(str(evals),)), tmp_path / "out")
                           / "manifest.json").read_text())
    assert manifest["documents_rejected"] == {"eval_contamination": 1}
    assert manifest["documents_kept"] == 2


def test_bad_inputs_never_crash_the_stage(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "good.txt").write_text(PARAGRAPH * 4)
    (root / "other.txt").write_text("Completely different words about mountains and rivers. " * 8)
    (root / "binary.bin").write_bytes(bytes(range(256)) * 40)
    (root / "huge.txt").write_text("word " * 10_000_000)  # a 50 MB single-line document
    (root / "bad.jsonl").write_text('{"text": 1}\n{broken\n')
    manifest = json.loads((ingest_corpus(_config(root), tmp_path / "out") / "manifest.json").read_text())
    assert manifest["documents_rejected"] == {"binary_file": 1, "text_not_a_string": 1, "bad_json_record": 1,
                                              "too_long": 1}
    assert manifest["documents_kept"] == 2


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.txt").write_text("tiny")
    with pytest.raises(ValueError, match="no document survived"):
        ingest_corpus(IngestConfig(sources=(str(tmp_path / "c"),)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shards_split_large_outputs(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    for i in range(7):
        (root / f"{i}.txt").write_text(f"Document {i} talks about topic number {i} at length. " * 10
                                       + " ".join(f"w{i}x{j}" for j in range(60)) + ".")
    out = ingest_corpus(IngestConfig(sources=(str(root),), validation_fraction=0.2, documents_per_shard=2,
                                     cleaning=CleaningConfig(min_chars=50)), tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents_kept"] == 7
    train_shards = sorted(out.glob("documents-train-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in train_shards][:-1] == [2] * (len(train_shards) - 1)


def test_bundled_sample_ingests(documents_dir):
    manifest = json.loads((documents_dir / "manifest.json").read_text())
    assert manifest["documents_kept"] > 80
    assert manifest["sentences"] > 15000
    docs = read_ingested(documents_dir, "train") + read_ingested(documents_dir, "validation")
    flat = " ".join(s for doc in docs for s in doc)
    assert "Down the Rabbit-Hole" in flat  # Alice's body is there...
    assert "START OF THE PROJECT GUTENBERG" not in flat and "END OF THE PROJECT GUTENBERG" not in flat  # ...not its licence


def test_counts_per_source_follow_globs(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    (root / "other.txt").write_text("Completely different words about mountains and rivers. " * 8)
    glob_source = str(root / "*.txt")
    manifest = json.loads((ingest_corpus(IngestConfig(sources=(glob_source, str(root / "a.jsonl")), seed=1,
                                                      validation_fraction=0.3, cleaning=CleaningConfig(min_chars=50)),
                                         tmp_path / "out") / "manifest.json").read_text())
    assert set(manifest["per_source"]) == {glob_source, str(root / "a.jsonl")}
    assert manifest["per_source"][glob_source]["read"] == 5  # bad, empty, other, wiki (2 docs)


def test_a_small_corpus_gets_two_documents_in_each_split():
    """NSP draws the random next segment from another document of the split: a hash split that holds out one
    document of ten moves the train document nearest the threshold over; two documents stay one each."""
    import numpy as np

    from bert_core.ingest.corpus import _ensure_both_splits

    points = [np.array([0.01, 0.5, 0.07, 0.9, 0.3]), np.array([0.2, 0.06, 0.8, 0.4, 0.6])]
    decisions = [np.where(p < 0.05, 2, 1) for p in points]  # 0.05: only 0.01 held out
    assert _ensure_both_splits(decisions, points)
    assert [list(d) for d in decisions] == [[2, 1, 1, 1, 1], [1, 2, 1, 1, 1]]  # 0.06, the nearest, moved
    two = [np.array([2, 1])]
    assert not _ensure_both_splits(two, [np.array([0.01, 0.5])]) and list(two[0]) == [2, 1]
    empty = [np.array([1, 1, 1])]
    assert _ensure_both_splits(empty, [np.array([0.3, 0.1, 0.2])]) and list(empty[0]) == [1, 2, 1]


def test_a_task_files_text_columns_are_a_source_of_sentences(tmp_path):
    # Self-pretraining on downstream text: SST-2's phrases (no end punctuation: a sentence splitter would make a
    # 10-phrase document one sentence) and both sentences of each MRPC pair stay the sentences they are.
    from bert_core.ingest.sources import SAMPLE_DIR, ReadConfig
    from bert_core.ingest.textfiles import read_table_file

    sst2, mrpc = SAMPLE_DIR / "sst2" / "train.tsv", SAMPLE_DIR / "mrpc" / "train.tsv"
    sources = (f"{sst2}::sentence", f"{mrpc}::#1 String,#2 String", f"{sst2}::no_such_column")
    config = IngestConfig(sources=sources, validation_fraction=0.1, seed=1, read=ReadConfig(rows_per_document=10))
    out = ingest_corpus(config, tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    phrases = read_table_file(sst2, string_columns=("sentence",)).column("sentence").to_pylist()
    pairs = read_table_file(mrpc, string_columns=("#1 String",)).num_rows
    assert manifest["per_source"][sources[0]]["read"] == len(phrases) // 10 == 400
    assert manifest["per_source"][sources[1]]["read"] == pairs // 10 == 80
    assert manifest["documents_rejected"]["missing_text_field"] == 1
    [problem] = [p for p in manifest["problem_files"] if p["problem"] == "missing_text_field"]
    assert "no_such_column" in problem["example"] and "sentence" in problem["example"]
    documents = read_ingested(out, "train") + read_ingested(out, "validation")
    first = [p.strip() for p in phrases[:10] if len(p.strip()) >= 2]
    assert first in documents  # the first ten rows, each its own sentence
    mrpc_docs = [d for d in documents if len(d) == 20]  # 10 pairs -> 20 sentences
    assert len(mrpc_docs) >= 70
    # The part key follows the file's content: a rerun is skipped.
    record = (out / "stage.json").stat().st_mtime_ns
    ingest_corpus(config, tmp_path / "out")
    assert (out / "stage.json").stat().st_mtime_ns == record
