import json

import numpy as np
import pyarrow as pa
import pytest

from bert_core.examples.shards import id_type, open_shards, read_manifest, verify_shards, write_shards


def _columns(n, rng):
    lengths = rng.integers(5, 40, size=n)
    ids = [rng.integers(0, 3000, size=k) for k in lengths]
    return {
        "input_ids": ids,
        "token_type_ids": [(np.arange(k) > k // 2).astype(np.int64) for k in lengths],
        "next_sentence_label": rng.integers(0, 2, size=n).tolist(),
        "masked_lm_positions": [np.sort(rng.choice(k, size=3, replace=False)) for k in lengths],
        "masked_lm_labels": [rng.integers(0, 3000, size=3) for _ in lengths],
    }


def test_round_trip_equal_shards_and_manifest(tmp_path):
    rng = np.random.default_rng(0)
    columns = _columns(1003, rng)
    manifest = write_shards(columns, tmp_path, vocab_size=3000, examples_per_shard=250,
                            metadata={"max_seq_length": 64, "split": "train"})
    assert manifest["num_shards"] == 4
    assert [s["num_examples"] for s in manifest["shards"]] == [250] * 4
    assert manifest["dropped_for_equal_shards"] == 3
    assert manifest["num_examples"] == 1000
    tables, read_back = open_shards(tmp_path)
    assert read_back == json.loads(json.dumps(manifest))
    assert sum(t.num_rows for t in tables) == manifest["num_examples"]
    assert manifest["num_tokens"] == sum(int(np.sum(t.column("length"))) for t in tables)
    table = pa.concat_tables(tables)
    assert table.schema.field("input_ids").type == pa.list_(pa.uint16())
    for i in (0, 511, 999):
        assert table.column("input_ids")[i].as_py() == columns["input_ids"][i].tolist()
        assert table.column("masked_lm_positions")[i].as_py() == columns["masked_lm_positions"][i].tolist()
        assert table.column("next_sentence_label")[i].as_py() == columns["next_sentence_label"][i]
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_narrowest_id_type():
    assert id_type(200) == pa.uint8()
    assert id_type(30522) == pa.uint16()
    assert id_type(65536) == pa.uint16()
    assert id_type(250_000) == pa.uint32()


def test_checksums_catch_a_corrupt_shard(tmp_path):
    write_shards(_columns(100, np.random.default_rng(1)), tmp_path, vocab_size=3000, examples_per_shard=50,
                 metadata={"max_seq_length": 64})
    verify_shards(tmp_path)
    shard = tmp_path / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        verify_shards(tmp_path)


def test_examples_over_max_seq_length_are_refused(tmp_path):
    with pytest.raises(ValueError, match="over max_seq_length"):
        write_shards(_columns(10, np.random.default_rng(2)), tmp_path, vocab_size=3000, examples_per_shard=10,
                     metadata={"max_seq_length": 8})


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished shard directory"):
        read_manifest(tmp_path)
