"""The examples flow runs units on a Dask LocalCluster of 2 worker processes and writes the same bytes as bert_core."""

from dataclasses import replace

from bert_core.examples.generation import generate_examples
from bert_core.examples.shards import read_manifest
from flows.examples import examples_flow
from tests.conftest import TINY_EXAMPLES


def _checksums(out):
    return {split: [s["sha256"] for s in read_manifest(out / split)["shards"]] for split in ("train", "validation")}


def test_dask_examples_equal_a_single_process_run(documents_dir, tmp_path):
    reference = generate_examples(replace(TINY_EXAMPLES, unit_tokens=50_000), documents_dir, tmp_path / "one" / "examples")
    out = examples_flow(documents_dir=str(documents_dir), work_dir=str(tmp_path / "dask"), n_workers=2, examples={
        "tokenizer": {"vocab_size": 2000}, "max_seq_length": 64, "examples_per_shard": 1000, "unit_tokens": 50_000})
    assert read_manifest(reference / "train")["units"] >= 4
    assert _checksums(tmp_path / "dask" / "examples") == _checksums(reference)
    assert out == str(tmp_path / "dask" / "examples")
