"""The ingest flow maps input files over a Dask LocalCluster of 2 worker processes and matches a serial run."""

import json
import os

import pyarrow.parquet as pq

from bert_core.ingest.cleaning import CleaningConfig
from bert_core.ingest.corpus import IngestConfig, ingest_corpus
from flows.ingest import ingest_flow
from tests.ingest.test_sources import write_corpus


def _rows(out):
    return [pq.read_table(p).to_pylist() for p in sorted(out.glob("documents-*.parquet"))]


def test_dask_ingest_equals_serial_ingest(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    for i in range(4):
        (root / f"extra{i}.txt").write_text(f"Extra document {i} has its own words, number {i}. " * 6
                                            + " ".join(f"t{i}y{j}" for j in range(40)) + ".")
    # A file name that is not UTF-8 travels through Prefect's JSON parameters and Dask (it used to crash the flow).
    (root / os.fsdecode(b"caf\xe9.txt")).write_text("A caf\u00e9 on the corner sells bread and coffee all day. " * 6
                                                    + " ".join(f"c{j}z" for j in range(40)) + ".")
    out = ingest_flow(sources=[str(root)], work_dir=str(tmp_path / "dask"), n_workers=2,
                      ingest={"cleaning": {"min_chars": 50}, "validation_fraction": 0.3})
    serial = ingest_corpus(IngestConfig(sources=(str(root),), validation_fraction=0.3,
                                        cleaning=CleaningConfig(min_chars=50)), tmp_path / "serial" / "ingest")
    manifest = json.loads((tmp_path / "dask" / "ingest" / "manifest.json").read_text())
    assert out == str(tmp_path / "dask" / "ingest")
    assert manifest["documents_read"] == 18 and manifest["documents_kept"] == 9
    assert any(part["unit"].endswith("caf\\xe9.txt") for part in manifest["parts"])
    assert _rows(tmp_path / "dask" / "ingest") == _rows(serial)  # same documents, same order, same split
