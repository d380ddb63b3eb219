import bz2
import gzip
import json
import lzma

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bert_core.cleaning import CleaningConfig
from bert_core.corpus import IngestConfig, ingest_corpus, read_documents, read_ingested

PARAGRAPH = "The river runs through the old town. Boats carry goods to the market every morning. "


def _write_corpus(root):
    root.mkdir()
    (root / "a.jsonl").write_text(
        json.dumps({"text": PARAGRAPH * 3, "id": 1}) + "\n{not json\n" + json.dumps({"body": "no text field"}) + "\n"
    )
    pq.write_table(pa.table({"text": [PARAGRAPH * 4, None]}), root / "b.parquet")
    with gzip.open(root / "c.txt.gz", "wt") as f:
        f.write(PARAGRAPH * 5)
    with bz2.open(root / "d.txt.bz2", "wt") as f:
        f.write("Kites fly high over the hills. Children chase them all day long. " * 4)
    with lzma.open(root / "e.txt.xz", "wt") as f:
        f.write("Snow fell on the quiet village. Nobody went outside that night. " * 4)
    (root / "bad.txt").write_bytes(b"\xff\xfe\xfa not utf-8 \xff" * 20)
    (root / "empty.txt").write_text("")
    (root / "wiki.txt").write_text(
        '<doc id="7" url="u" title="Title">\nTitle\n\n' + PARAGRAPH * 3 + "\n</doc>\n"
        '<doc id="8" url="u" title="Other">\nOther\n\nTiny.\n</doc>\n'
    )
    return root


def test_read_documents_handles_every_format(tmp_path):
    root = _write_corpus(tmp_path / "corpus")
    docs = list(read_documents(str(root), IngestConfig()))
    by_id = {d.id: d for d in docs}
    assert by_id["a.jsonl:0"].text.startswith("The river")
    assert by_id["a.jsonl:1"].error.startswith("bad_json_line")
    assert by_id["a.jsonl:2"].error.startswith("bad_json_line")
    assert by_id["b.parquet:1"].error == "text_not_a_string"
    assert by_id["c.txt.gz"].text.startswith("The river")
    assert by_id["d.txt.bz2"].text.startswith("Kites")
    assert by_id["e.txt.xz"].text.startswith("Snow")
    assert "UnicodeDecodeError" in by_id["bad.txt"].error
    assert by_id["empty.txt"].text == ""
    assert by_id["wiki:7"].text.startswith("The river")  # title line dropped
    assert by_id["wiki:8"].text == "Tiny."


def test_ingest_accounts_for_every_document_and_is_idempotent(tmp_path):
    root = _write_corpus(tmp_path / "corpus")
    config = IngestConfig(sources=(str(root),), validation_fraction=0.3, seed=1,
                          cleaning=CleaningConfig(min_chars=50))
    out = ingest_corpus(config, tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents_read"] == 12
    assert manifest["documents_read"] == manifest["documents_kept"] + sum(manifest["documents_rejected"].values())
    assert manifest["documents_rejected"]["read_error"] == 4  # bad json x2, null text, invalid utf-8
    assert manifest["documents_rejected"]["exact_duplicate"] == 1  # wiki:7 has the same text as a.jsonl:0
    assert manifest["documents_rejected"]["empty"] == 1
    assert manifest["documents_rejected"]["too_short"] == 1  # wiki:8
    train, validation = read_ingested(out, "train"), read_ingested(out, "validation")
    assert len(train) + len(validation) == manifest["documents_kept"]
    record = (out / "stage.json").stat().st_mtime_ns
    ingest_corpus(config, tmp_path / "out")
    assert (out / "stage.json").stat().st_mtime_ns == record  # skipped: same inputs, same config
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary leftovers


def test_ingest_rejects_an_empty_corpus_clearly(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.txt").write_text("tiny")
    with pytest.raises(ValueError, match="no document survived"):
        ingest_corpus(IngestConfig(sources=(str(tmp_path / "c"),)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file"):
        list(read_documents(str(tmp_path / "nope"), IngestConfig()))


def test_bundled_sample_ingests(documents_dir):
    manifest = json.loads((documents_dir / "manifest.json").read_text())
    assert manifest["documents_kept"] > 80
    assert manifest["sentences"] > 15000
    books = read_ingested(documents_dir, "train") + read_ingested(documents_dir, "validation")
    flat = " ".join(s for doc in books for s in doc)
    assert "Down the Rabbit-Hole" in flat  # Alice's body is there...
    assert "START OF THE PROJECT GUTENBERG" not in flat and "END OF THE PROJECT GUTENBERG" not in flat  # ...not its licence
