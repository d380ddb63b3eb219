"""Hostile input: a bad file or record is a counted rejection with its reason, never a crash or a silent loss.

Each test here failed on the readers as they were before (crashes on random zstd bytes, deep JSON, lone
surrogates and non-UTF-8 file names; whole Latin-1 books rejected; records after a bad byte lost; unclosed
WikiExtractor documents dropped; truncated zstd read as empty; JSON arrays read as lines; non-Latin text collapsed
to one document by exact dedup; sources under hidden or relative directories finding no files).
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bert_core.ingest.cleaning import CleaningConfig
from bert_core.ingest.corpus import IngestConfig, ingest_corpus, read_ingested
from bert_core.ingest.sources import SAMPLE_DIR, input_units, read_documents

REPO = Path(__file__).resolve().parents[1]
MULTILINGUAL = Path(__file__).resolve().parent / "data" / "multilingual"


def _wiki_texts(n: int) -> list[str]:
    """Real text: the first n articles of the bundled Wikipedia sample with 600+ characters."""
    texts = []
    for doc in read_documents(str(SAMPLE_DIR / "corpus" / "wikipedia")):
        if len(doc.text) >= 600:
            texts.append(doc.text[:3000])
        if len(texts) == n:
            return texts
    raise AssertionError("the bundled sample has too few articles")


def _alice(chars: int = 20_000) -> str:
    """Real book text with accents and typographic quotes: the start of the bundled Alice in Wonderland."""
    with gzip.open(SAMPLE_DIR / "corpus" / "books" / "pg11.txt.gz", "rt", encoding="utf-8") as f:
        return f.read().lstrip("\ufeff")[:chars]


# UDHR Article 1 in French (OHCHR): real Latin-1 text, which Alice (ASCII and curly quotes) is not.
FRENCH = ("Tous les êtres humains naissent libres et égaux en dignité et en droits. Ils sont doués de raison et de "
          "conscience et doivent agir les uns envers les autres dans un esprit de fraternité.")


def _ingest(root: Path, out: Path, **cleaning) -> dict:
    config = IngestConfig(sources=(str(root),), validation_fraction=0.3, seed=1,
                          cleaning=CleaningConfig(**{"min_chars": 50, **cleaning}))
    return json.loads((ingest_corpus(config, out) / "manifest.json").read_text())


def test_random_bytes_with_an_archive_suffix_are_one_unreadable_file(tmp_path):
    noise = random.Random(0).randbytes(4000)
    for name in ("a.jsonl.zst", "b.txt.zst", "c.txt.gz", "d.jsonl.bz2", "e.txt.xz"):
        (tmp_path / name).write_bytes(noise)
    docs = list(read_documents(str(tmp_path)))
    assert [d.error for d in docs] == ["unreadable_file"] * 5
    assert "ZstdError" in docs[0].detail and str(tmp_path / "a.jsonl.zst") in docs[0].detail


@pytest.mark.parametrize("suffix,compress", [(".zst", zstandard.ZstdCompressor().compress), (".gz", gzip.compress),
                                             (".bz2", bz2.compress), (".xz", lzma.compress)])
def test_a_truncated_archive_is_reported_broken_and_keeps_its_complete_records(tmp_path, suffix, compress):
    texts = _wiki_texts(12)
    data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    blob = compress(data)
    (tmp_path / f"r.jsonl{suffix}").write_bytes(blob[: len(blob) * 2 // 3])
    (tmp_path / f"book.txt{suffix}").write_bytes(compress(texts[0].encode())[:-8])
    docs = list(read_documents(str(tmp_path)))
    book, records = docs[0], docs[1:]
    assert book.error == "truncated_archive" and book.source.endswith(f"book.txt{suffix}")
    assert records[-1].error == "truncated_archive" and "EOFError" in records[-1].detail
    assert [d.text for d in records[:-1]] == texts[: len(records) - 1]  # complete records before the cut, unchanged
    if suffix == ".gz":
        assert len(records) > 2  # gzip streams: the records before the cut come out


def test_deeply_nested_json_is_one_bad_record_and_the_file_goes_on(tmp_path):
    good = _wiki_texts(2)
    (tmp_path / "deep.jsonl").write_text(json.dumps({"text": good[0]}) + "\n" + "[" * 200_000 + "]" * 200_000 + "\n"
                                         + json.dumps({"text": good[1]}) + "\n")
    docs = list(read_documents(str(tmp_path)))
    assert [d.error for d in docs] == [None, "bad_json_record", None]
    assert f"{tmp_path / 'deep.jsonl'}:2: nested too deeply" in docs[1].detail


def test_lone_surrogates_are_replaced_and_the_stage_finishes(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    texts = _wiki_texts(3)
    (root / "s.jsonl").write_text(json.dumps({"text": texts[0] + " Broken pair \ud800 here."}) + "\n")
    for i, text in enumerate(texts[1:]):
        (root / f"{i}.txt").write_text(text)
    manifest = _ingest(root, tmp_path / "out")
    assert manifest["documents_kept"] == 3 and manifest["documents_rejected"] == {}
    kept = " ".join(s for doc in read_ingested(tmp_path / "out", "train") + read_ingested(tmp_path / "out", "validation")
                    for s in doc)
    assert "Broken pair \ufffd here." in kept
    assert [(Path(p["path"]).name, p["problem"]) for p in manifest["problem_files"]] == [("s.jsonl", "surrogates_replaced")]


def test_a_file_name_that_is_not_utf8_is_read_and_shown_escaped(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    texts = _wiki_texts(2)
    (root / os.fsdecode(b"caf\xe9.txt")).write_text(texts[0])  # a Latin-1 byte in the name
    (root / "plain.txt").write_text(texts[1])
    manifest = _ingest(root, tmp_path / "out")
    assert manifest["documents_kept"] == 2
    assert any(unit["unit"].endswith("caf\\xe9.txt") for unit in manifest["parts"])
    json.dumps(manifest, ensure_ascii=False).encode("utf-8")  # the manifest is valid UTF-8 text


def test_latin1_cp1252_utf16_and_mixed_text_are_decoded_not_rejected(tmp_path):
    alice = _alice()
    latin1 = (alice + "\n\n" + FRENCH).encode("latin-1", errors="replace")
    (tmp_path / "a-latin1.txt").write_bytes(latin1)
    (tmp_path / "b-cp1252.txt").write_bytes(alice.encode("cp1252"))
    (tmp_path / "c-utf16.txt").write_bytes(alice.encode("utf-16"))  # with its byte-order mark
    news = "The ticket cost £40 at the café, a price the crowd called “absurd”.\n"
    (tmp_path / "d-mixed.txt").write_bytes(alice.encode("utf-8") + news.encode("cp1252"))  # one Latin-1 line
    docs = {Path(d.source).name: d for d in read_documents(str(tmp_path))}
    assert docs["a-latin1.txt"].text == latin1.decode("latin-1") and docs["a-latin1.txt"].encoding == "cp1252"
    assert docs["b-cp1252.txt"].text == alice and docs["b-cp1252.txt"].encoding == "cp1252"
    assert docs["c-utf16.txt"].text == alice and docs["c-utf16.txt"].encoding == "utf-16"
    assert docs["d-mixed.txt"].text == alice + news and docs["d-mixed.txt"].encoding == "utf-8+cp1252"


def test_one_bad_byte_in_a_jsonl_line_loses_nothing(tmp_path):
    texts = _wiki_texts(6)
    lines = [json.dumps({"text": t}, ensure_ascii=False).encode() for t in texts]
    lines[2] = lines[2].replace(b'": "', b'": "\xa3', 1)  # a Latin-1 pound sign opens the text of line 3
    (tmp_path / "six.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    docs = list(read_documents(str(tmp_path)))
    assert len(docs) == 6 and all(d.error is None for d in docs)
    assert [d.encoding for d in docs] == ["utf-8"] * 2 + ["utf-8+cp1252"] + ["utf-8"] * 3  # its ° stays UTF-8
    assert docs[2].text == "£" + texts[2]


def test_an_unclosed_wikiextractor_doc_is_kept_and_listed(tmp_path):
    a, b, c = _wiki_texts(3)
    content = (f'<doc id="1" url="u" title="A">\nA\n\n{a}\n</doc>\n'
               f'<doc id="2" url="u" title="B">\nB\n\n{b}\n'  # no </doc>: the next one opens
               f'<doc id="3" url="u" title="C">\nC\n\n{c}\n')  # no </doc> at the end
    (tmp_path / "wiki_00").write_text(content)
    docs = list(read_documents(str(tmp_path)))
    assert [d.id for d in docs] == ["wiki:1", "wiki:2", "wiki:3"]
    assert [d.note for d in docs] == [None, "unclosed_doc", "unclosed_doc"]
    assert docs[1].text == "\n\n".join(p.strip() for p in b.split("\n") if p.strip())
    opened = content.split("\n").index('<doc id="2" url="u" title="B">') + 1
    assert f"wiki_00:{opened}: <doc id='2'> has no </doc>" in docs[1].detail  # the line it opened on


def test_a_json_file_holding_an_array_is_read_as_records(tmp_path):
    texts = _wiki_texts(3)
    (tmp_path / "records.json").write_text(json.dumps([{"text": t, "id": i} for i, t in enumerate(texts)], indent=2))
    (tmp_path / "one.json").write_text(json.dumps({"text": texts[0]}, indent=2))
    (tmp_path / "lines.json").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    docs = list(read_documents(str(tmp_path)))
    assert [d.error for d in docs] == [None] * 7
    assert [d.text for d in docs] == texts + [texts[0]] + texts  # lines.json, one.json, records.json


def test_bad_records_are_logged_with_file_and_line(tmp_path, caplog):
    root = tmp_path / "c"
    root.mkdir()
    texts = _wiki_texts(3)
    (root / "bad.jsonl").write_text(json.dumps({"text": texts[0]}) + "\n{broken\n" + json.dumps({"text": 7}) + "\n"
                                    + json.dumps({"body": texts[1]}) + "\n")
    (root / "ok.txt").write_text(texts[2])
    (root / "more.txt").write_text(texts[1][::-1])
    with caplog.at_level(logging.WARNING, logger="bert_core"):
        manifest = _ingest(root, tmp_path / "out")
    assert manifest["documents_rejected"] == {"bad_json_record": 1, "text_not_a_string": 1, "missing_text_field": 1}
    logged = caplog.text
    for where in ("bad.jsonl:2", "bad.jsonl:3", "bad.jsonl:4"):
        assert f"{root / where}" in logged, where


def test_sources_may_lie_under_hidden_or_relative_directories(tmp_path, monkeypatch):
    corpus = tmp_path / ".cache" / "corpus"
    (corpus / ".git").mkdir(parents=True)
    (corpus / "a.txt").write_text("text")
    (corpus / ".hidden.txt").write_text("not a source file")
    (corpus / ".git" / "config").write_text("not a source file")
    assert input_units([str(corpus)]) == [str(corpus / "a.txt")]
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert input_units(["../.cache/corpus"]) == ["../.cache/corpus/a.txt"]


def test_text_in_every_script_survives_cleaning_and_dedup(tmp_path):
    """Nine real UDHR translations (Arabic, Chinese, Greek, Hebrew, Hindi, Japanese, Korean, Persian, Russian):
    exact dedup used to normalise each to the empty word sequence and keep only the first."""
    manifest = _ingest(MULTILINGUAL / "udhr-*.txt", tmp_path / "out", min_chars=100)
    assert manifest["documents_read"] == 9
    assert manifest["documents_kept"] == 9, manifest["documents_rejected"]
    docs = read_ingested(tmp_path / "out", "train") + read_ingested(tmp_path / "out", "validation")
    flat = " ".join(s for doc in docs for s in doc)
    for phrase in ("Все люди рождаются", "Όλοι οι άνθρωποι", "人人生而自由", "सभी मनुष्यों", "يولد جميع الناس"):
        assert phrase in flat


def _hostile_corpus(root: Path) -> tuple[dict[str, int], set[str], dict[str, str]]:
    """Good files of every format between bad ones. Returns (rejections expected by reason, good texts, the
    expected problem of each bad file by name)."""
    root.mkdir()
    texts = _wiki_texts(16)
    good = set()

    def keep(text):
        good.add(text)
        return text

    (root / "01-good.txt").write_text(keep(texts[0]))
    (root / "02-noise.jsonl.zst").write_bytes(random.Random(1).randbytes(3000))
    with gzip.open(root / "03-good.txt.gz", "wt", encoding="utf-8") as f:
        f.write(keep(texts[1]))
    (root / "04-deep.jsonl").write_text(json.dumps({"text": keep(texts[2])}) + "\n" + "{\"a\":" * 100_000 + "\n")
    latin1 = (texts[3] + " " + FRENCH).encode("latin-1", errors="replace")
    (root / "05-latin1.txt").write_bytes(latin1)
    keep(latin1.decode("latin-1"))
    lines = [json.dumps({"text": keep(t)}, ensure_ascii=False).encode() for t in texts[4:7]]
    lines.insert(1, b'{"text": "\xff\xfe\x00\x01\x02\x03\x04\x05\x06\x07\x08"}')  # binary garbage in a record
    (root / "06-mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    zst = zstandard.ZstdCompressor().compress(json.dumps({"text": texts[7]}).encode() + b"\n")
    (root / "07-cut.jsonl.zst").write_bytes(zst[:-10])
    pq.write_table(pa.table({"text": [keep(texts[8]), None, keep(texts[9])]}), root / "08-rows.parquet")
    (root / "09-array.json").write_text(json.dumps([{"text": keep(texts[10])}, {"text": keep(texts[11])}, 5]))
    (root / "10-binary.bin").write_bytes(bytes(range(256)) * 50)
    (root / os.fsdecode(b"11-caf\xe9.txt")).write_text(keep(texts[12]))
    (root / "12-wiki").write_text(f'<doc id="99" url="u" title="T">\nT\n\n{keep(texts[13])}\n')
    (root / "13-surrogate.jsonl").write_text(json.dumps({"text": texts[14] + " \udc80"}) + "\n")
    good.add(texts[14] + " \ufffd")
    with bz2.open(root / "14-good.txt.bz2", "wt", encoding="utf-8") as f:
        f.write(keep(texts[15]))
    (root / "15-empty.txt").write_text("")
    (root / "16-utf16.txt").write_bytes(keep(texts[5][::-1]).encode("utf-16"))
    rejected = {"unreadable_file": 1, "bad_json_record": 2, "binary_file": 2, "truncated_archive": 1,
                "text_not_a_string": 1, "empty": 1}
    problems = {"02-noise.jsonl.zst": "unreadable_file", "04-deep.jsonl": "bad_json_record",
                "06-mixed.jsonl": "binary_file", "07-cut.jsonl.zst": "truncated_archive",
                "08-rows.parquet": "text_not_a_string", "09-array.json": "bad_json_record",
                "10-binary.bin": "binary_file", "12-wiki": "unclosed_doc", "13-surrogate.jsonl": "surrogates_replaced"}
    return rejected, good, problems


def test_a_hostile_corpus_ingests_and_generates_examples_through_the_cli(tmp_path):
    rejected, good, problems = _hostile_corpus(tmp_path / "corpus")
    config = tmp_path / "ingest.json"
    config.write_text(json.dumps({"sources": [str(tmp_path / "corpus")], "validation_fraction": 0.2,
                                  "cleaning": {"min_chars": 100}, "dedup": {"near": False}}))
    env = {**os.environ, "BERTFLOW_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-m", "bert_core", "ingest", "--config", str(config),
                          "--output-dir", str(tmp_path / "docs")], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((tmp_path / "docs" / "manifest.json").read_text())
    assert manifest["documents_read"] == manifest["documents_kept"] + sum(manifest["documents_rejected"].values())
    assert manifest["documents_rejected"] == rejected
    kept = {"\n\n".join(doc) for split in ("train", "validation") for doc in read_ingested(tmp_path / "docs", split)}
    assert manifest["documents_kept"] == len(good) == 16
    listed = {Path(p["path"]).name: p["problem"] for p in manifest["problem_files"]}
    assert listed == problems
    assert all(p["path"].startswith(str(tmp_path / "corpus")) and p["example"] for p in manifest["problem_files"])
    assert manifest["documents_per_encoding"]["cp1252"] == 1 and manifest["documents_per_encoding"]["utf-16"] == 1
    assert len(kept) == 16 and any("\ufffd" in k for k in kept) and any("égaux en dignité" in k for k in kept)

    examples = tmp_path / "examples.json"
    examples.write_text(json.dumps({"max_seq_length": 64, "examples_per_shard": 500,
                                    "tokenizer": {"vocab_size": 1500}}))
    run = subprocess.run([sys.executable, "-m", "bert_core", "examples", "--config", str(examples), "--documents-dir",
                          str(tmp_path / "docs"), "--output-dir", str(tmp_path / "ex"), "--workers", "1"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "ex" / "stage.json").read_text())
    assert record["outputs"]["train"]["num_examples"] > 0 and record["outputs"]["validation"]["num_examples"] > 0


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_examples_stage_leaves_no_process_and_its_rerun_removes_stale_temporaries(documents_dir, tmp_path):
    """kill -9 of the stage's main process while two pool workers generate units: every process it started ends
    within 5 s (they waited on their queue for a minute or more). The rerun removes the temporaries that killed
    writers left (`.examples.tmp-*`, `.tokens.tmp-*`), never a live writer's, and finishes."""
    import socket
    import time

    import psutil

    config = tmp_path / "examples.json"
    config.write_text(json.dumps({"max_seq_length": 64, "unit_tokens": 8192, "tokenizer": {"vocab_size": 2000}}))
    command = [sys.executable, "-m", "bert_core", "examples", "--config", str(config), "--documents-dir",
               str(documents_dir), "--output-dir", str(tmp_path / "examples"), "--workers", "2"]
    env = {**os.environ, "BERTFLOW_HOME": str(tmp_path / "home")}
    main = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(main.pid)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and main.poll() is None:
        # forkserver + resource tracker + 2 workers (the workers are the forkserver's children)
        if len(parent.children(recursive=True)) >= 4:
            break
        time.sleep(0.05)
    assert main.poll() is None, "the stage finished before its workers could be seen; give it more units"
    descendants = parent.children(recursive=True)
    assert len(descendants) >= 4
    main.kill()
    main.wait()
    gone, alive = psutil.wait_procs(descendants, timeout=5)
    leftover = [(p.pid, p.name()) for p in alive]
    for p in alive:
        p.kill()
    assert not leftover, f"still running 5 s after the stage was killed: {leftover}"

    host, dead, live = socket.gethostname(), _dead_pid(), os.getpid()
    stale = [tmp_path / f".examples.tmp-{host}-{dead}-{'a' * 12}", tmp_path / f".tokens.tmp-{host}-{dead}-{'b' * 12}"]
    kept = [tmp_path / f".examples.tmp-{host}-{live}-{'c' * 12}",  # a live writer (this test process)
            tmp_path / f".tokens.tmp-other-host-{dead}-{'d' * 12}"]  # another host's: cannot be judged from here
    for path in stale + kept:
        path.mkdir()
        (path / "shard-00000.arrow").write_bytes(b"partial")
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert json.loads((tmp_path / "examples" / "stage.json").read_text())["outputs"]["train"]["num_examples"] > 0
