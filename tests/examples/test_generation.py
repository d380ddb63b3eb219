import random
from pathlib import Path

import numpy as np
import pytest

from bert_core.examples.pairs import document_pairs, truncate_spans
from bert_core.examples.shards import ShardDataset, read_manifest, verify_shards
from bert_core.examples.token_store import TokenStore


def _synthetic_documents(num_docs=40, sentences=12, rng=None):
    """Token ids that encode (document, sentence): doc d, sentence s -> ids d*10000 + s*100 + k."""
    rng = rng or random.Random(0)
    return [[[d * 10000 + s * 100 + k for k in range(rng.randint(3, 25))] for s in range(sentences)]
            for d in range(num_docs)]


def _origin(token):
    return token // 10000, (token % 10000) // 100


class _Pair:
    """A pair of spans materialised as token lists (what the shards will hold between [CLS]/[SEP])."""

    def __init__(self, store, span):
        chunk_a, a_lo, a_hi, chunk_b, b_lo, b_hi, label = span
        self.tokens_a = store.values(chunk_a)[a_lo:a_hi].tolist()
        self.tokens_b = store.values(chunk_b)[b_lo:b_hi].tolist()
        self.is_random_next = bool(label)


def _pairs(docs, passes, seed, **kwargs):
    store, rng = TokenStore.from_documents(docs), random.Random(seed)
    return [_Pair(store, p) for _ in range(passes) for i in range(len(docs))
            for p in document_pairs(store, i, rng=rng, **kwargs)]


def test_truncate_spans_trims_the_longer_side():
    a_lo, a_hi, b_lo, b_hi = truncate_spans(0, 10, 100, 103, 8, random.Random(0))
    assert (a_hi - a_lo) + (b_hi - b_lo) == 8 and (b_lo, b_hi) == (100, 103) and a_lo + (10 - a_hi) == 5


def test_nsp_pairs_follow_the_google_algorithm():
    docs = _synthetic_documents()
    pairs = _pairs(docs, 5, 1, max_seq_length=64, short_seq_prob=0.1)
    share_random = np.mean([p.is_random_next for p in pairs])
    assert 0.45 < share_random < 0.56, share_random
    for p in pairs:
        assert 2 <= len(p.tokens_a) + len(p.tokens_b) <= 61
        doc_a = {_origin(t)[0] for t in p.tokens_a}
        doc_b = {_origin(t)[0] for t in p.tokens_b}
        assert len(doc_a) == 1 and len(doc_b) == 1
        if p.is_random_next:
            assert doc_a != doc_b  # the random segment comes from another document
        else:
            assert doc_a == doc_b
            # B continues A: its first sentence comes right after A's last one (truncation only trims the ends).
            assert _origin(p.tokens_b[0])[1] >= _origin(p.tokens_a[-1])[1]
    # short_seq_prob makes some examples much shorter than the maximum.
    lengths = np.array([len(p.tokens_a) + len(p.tokens_b) for p in pairs])
    assert (lengths < 30).mean() > 0.02


def test_generation_is_deterministic(examples_dir, documents_dir, tmp_path):
    from bert_core.examples.generation import generate_examples
    from tests.conftest import TINY_EXAMPLES

    again = generate_examples(TINY_EXAMPLES, documents_dir, tmp_path / "again")
    for split in ("train", "validation"):
        a, b = read_manifest(examples_dir / split), read_manifest(again / split)
        assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_examples_stage_outputs(examples_dir):
    for split in ("train", "validation"):
        verify_shards(examples_dir / split)
        manifest = read_manifest(examples_dir / split)
        quality = manifest["quality"]
        assert manifest["max_seq_length"] == 64 and quality["max_length"] <= 64
        assert abs(quality["masked_share_of_maskable"] - 0.15) < 0.01
        assert quality["special_tokens_masked"] == 0
        if split == "train":
            assert 0.45 < quality["nsp_random_next_share"] < 0.56
            assert abs(quality["mask_token_share"] - 0.8) < 0.02
            assert abs(quality["random_token_share"] - 0.1) < 0.02
        dataset = ShardDataset(examples_dir / split)
        assert len(dataset) == manifest["num_examples"]
        item = dataset[0]
        ids = item["input_ids"]
        assert ids[0] == 2 and ids[-1] == 3 and (ids == 3).sum() == 2
        sep = int(np.flatnonzero(ids == 3)[0])
        assert (item["token_type_ids"][: sep + 1] == 0).all() and (item["token_type_ids"][sep + 1 :] == 1).all()
        assert item["masked_lm_positions"].size == item["masked_lm_labels"].size > 0


def test_tokenizer_is_saved_with_the_shards(examples_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(examples_dir / "tokenizer")
    assert len(tokenizer) == read_manifest(examples_dir / "train")["vocab_size"] == 2000


def test_dynamic_masking_stores_unmasked_examples(documents_dir, tmp_path):
    from dataclasses import replace

    from bert_core.examples.generation import generate_examples
    from tests.conftest import TINY_EXAMPLES

    out = generate_examples(replace(TINY_EXAMPLES, masking="dynamic"), documents_dir, tmp_path / "dyn")
    train = read_manifest(out / "train")
    assert train["masking"] == "dynamic" and "masked_lm_positions" not in train["schema"]
    assert read_manifest(out / "validation")["masking"] == "static"  # held-out evaluation stays fixed
    assert 4 not in ShardDataset(out / "train")[0]["input_ids"]


def test_rerun_with_same_inputs_is_skipped(examples_dir, documents_dir):
    from bert_core.examples.generation import generate_examples
    from tests.conftest import TINY_EXAMPLES

    before = (examples_dir / "stage.json").stat().st_mtime_ns
    generate_examples(TINY_EXAMPLES, documents_dir, examples_dir)
    assert (examples_dir / "stage.json").stat().st_mtime_ns == before


def test_too_few_documents_is_a_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bert_core.examples.generation import ExamplesConfig, generate_examples
    from bert_core.examples.tokenizer import TokenizerConfig

    schema = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("sentences", pa.list_(pa.string()))])
    for split in ("train", "validation"):
        pq.write_table(pa.table({"doc_id": ["a"], "source": ["s"], "sentences": [["One sentence here.", "Two."]]},
                                schema=schema), tmp_path / f"documents-{split}-00000.parquet")
    with pytest.raises(ValueError, match="NSP needs 2"):
        generate_examples(ExamplesConfig(tokenizer=TokenizerConfig(vocab_size=100, min_frequency=1)), tmp_path,
                          tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sentence_order_prediction_pairs():
    pairs = _pairs(_synthetic_documents(), 5, 3, max_seq_length=64, short_seq_prob=0.1, pair_objective="sop")
    assert 0.45 < np.mean([p.is_random_next for p in pairs]) < 0.55
    for p in pairs:
        (doc_a,), (doc_b,) = {_origin(t)[0] for t in p.tokens_a}, {_origin(t)[0] for t in p.tokens_b}
        assert doc_a == doc_b  # SOP never draws from another document
        first_b, last_a = _origin(p.tokens_b[0])[1], _origin(p.tokens_a[-1])[1]
        # In order: B starts at or after A's last sentence; swapped: the other way round.
        assert (first_b >= last_a) if not p.is_random_next else (_origin(p.tokens_a[0])[1] >= _origin(p.tokens_b[-1])[1])


def test_long_sentences_keep_their_actual_next_pairs():
    """A sentence longer than the target still gets an actual-next partner (google's code drops the pair)."""
    docs = [[[d * 10000 + s * 100 + k for k in range(90)] for s in range(30)] for d in range(20)]  # 90-token sentences
    pairs = _pairs(docs, 1, 0, max_seq_length=64, short_seq_prob=0.0)
    assert 0.45 < np.mean([p.is_random_next for p in pairs]) < 0.55


def test_quality_gates_report_what_is_off():
    from bert_core.examples.generation import ExamplesConfig
    from bert_core.examples.quality import check_quality

    good = {"num_examples": 10_000, "nsp_random_next_share": 0.503, "max_length": 128, "num_masked": 100_000,
            "num_maskable": 660_000, "masked_share_of_maskable": 0.1515, "mask_token_share": 0.80,
            "random_token_share": 0.10, "unchanged_share": 0.10, "special_tokens_masked": 0}
    assert check_quality(good, ExamplesConfig()) == []
    bad = {**good, "nsp_random_next_share": 0.58, "max_length": 130, "special_tokens_masked": 3,
           "mask_token_share": 0.7, "unchanged_share": 0.2}
    failures = check_quality(bad, ExamplesConfig())
    assert len(failures) == 5 and any("label share 0.580" in f for f in failures)
    small = {**good, "num_examples": 70, "nsp_random_next_share": 0.6}  # 0.1 off is within 4 s.e. of 70 coins
    assert check_quality(small, ExamplesConfig()) == []


def test_inspect_shards_cli(examples_dir):
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-m", "bert_core", "inspect-shards", str(examples_dir), "--n", "2"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("\nexample ") == 2 and "[CLS]" in out.stdout and "[MASK]<" in out.stdout


def test_token_store_holds_the_tokenizer_output(examples_dir, documents_dir):
    from bert_core.examples.token_store import TokenStore
    from bert_core.examples.tokenizer import load_tokenizer
    from bert_core.ingest.corpus import read_ingested

    tokens_dir = examples_dir.with_name("tokens")
    store = TokenStore(tokens_dir / "tokens-train.arrow")
    tokenizer = load_tokenizer(tokens_dir / "tokenizer")
    docs = read_ingested(documents_dir, "train")
    assert len(store) == len(docs)
    for index in (0, len(docs) // 2, len(docs) - 1):
        expected = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(docs[index], add_special_tokens=False)]
        assert store[index] == [ids for ids in expected if ids]


def test_a_second_phase_reuses_the_tokenization(documents_dir, tmp_path):
    from dataclasses import replace

    from bert_core.examples.generation import generate_examples
    from bert_core.examples.masking import MaskingConfig
    from tests.conftest import TINY_EXAMPLES

    first = generate_examples(TINY_EXAMPLES, documents_dir, tmp_path / "phase1")
    record = tmp_path / "tokens" / "stage.json"
    before = record.stat().st_mtime_ns
    second = generate_examples(replace(TINY_EXAMPLES, max_seq_length=256, mlm=MaskingConfig(max_predictions_per_seq=40)),
                               documents_dir, tmp_path / "phase2")
    assert record.stat().st_mtime_ns == before  # tokenized once, used by both phases
    one, two = read_manifest(first / "train"), read_manifest(second / "train")
    assert one["tokenizer_hash"] == two["tokenizer_hash"]
    assert two["max_seq_length"] == 256 and 64 < two["quality"]["max_length"] <= 256
    assert two["num_examples"] < one["num_examples"]  # longer examples, fewer of them


@pytest.fixture(scope="module")
def multi_unit(documents_dir, tmp_path_factory):
    """The sample cut into many small units, generated by one process (the reference for the tests below)."""
    from dataclasses import replace

    from bert_core.examples.generation import generate_examples
    from tests.conftest import TINY_EXAMPLES

    config = replace(TINY_EXAMPLES, unit_tokens=40_000)
    return config, generate_examples(config, documents_dir, tmp_path_factory.mktemp("units") / "one-worker")


def _checksums(out):
    return {split: [s["sha256"] for s in read_manifest(out / split)["shards"]] for split in ("train", "validation")}


def test_worker_count_does_not_change_the_shards(multi_unit, documents_dir, tmp_path):
    from bert_core.examples.generation import generate_examples

    config, one = multi_unit
    assert read_manifest(one / "train")["units"] >= 4
    two = generate_examples(config, documents_dir, tmp_path / "two-workers", tokens_dir=one.with_name("tokens"),
                            workers=2)
    assert _checksums(two) == _checksums(one)
    assert not (tmp_path / "two-workers-parts").exists()  # parts are removed once the shards are written


def test_tokenizing_on_two_workers_writes_the_same_store(documents_dir, tmp_path, monkeypatch):
    """The corpus is tokenized in units on the pool too (not in one process beside it), into the same bytes."""
    from dataclasses import replace

    from bert_core import stage
    from bert_core.examples import token_store
    from bert_core.examples.generation import generate_examples
    from tests.conftest import TINY_EXAMPLES

    monkeypatch.setattr(token_store, "_UNIT_BYTES", 20_000)  # the sample in several tokenizing units
    config = replace(TINY_EXAMPLES, unit_tokens=40_000)
    one = generate_examples(config, documents_dir, tmp_path / "one" / "examples")
    two = generate_examples(config, documents_dir, tmp_path / "two" / "examples", workers=2)
    assert stage.read_json(tmp_path / "two" / "tokens" / "manifest.json")["units"] >= 4
    for split in ("train", "validation"):
        assert (stage.hash_file(tmp_path / "one" / "tokens" / f"tokens-{split}.arrow")
                == stage.hash_file(tmp_path / "two" / "tokens" / f"tokens-{split}.arrow"))
    assert _checksums(two) == _checksums(one)
    assert not list(tmp_path.glob("*/tokens-parts"))  # removed once the store is written


def test_a_crashed_tokenizing_run_keeps_its_finished_units(documents_dir, tmp_path, monkeypatch):
    from bert_core import stage
    from bert_core.examples import token_store
    from bert_core.examples.tokenizer import TokenizerConfig

    monkeypatch.setattr(token_store, "_UNIT_BYTES", 20_000)
    config = TokenizerConfig(vocab_size=2000)
    reference = token_store.tokenize_corpus(config, documents_dir, tmp_path / "reference")
    plan = token_store.plan_tokens(config, documents_dir, tmp_path / "tokens")
    first = token_store.tokenize_unit(plan["units"][0])  # then the run dies
    done = Path(plan["parts_dir"]) / "tokens-train-000000.json"
    before = done.stat().st_mtime_ns
    again = token_store.plan_tokens(config, documents_dir, tmp_path / "tokens")
    assert again["units"] == plan["units"] and token_store.tokenize_unit(again["units"][0]) == first
    assert done.stat().st_mtime_ns == before  # the finished unit was not tokenized again
    out = token_store.finish_tokens(again, [token_store.tokenize_unit(u) for u in again["units"]])
    for split in ("train", "validation"):
        assert stage.hash_file(out / f"tokens-{split}.arrow") == stage.hash_file(reference / f"tokens-{split}.arrow")
    assert stage.read_json(out / "manifest.json")["splits"] == stage.read_json(reference / "manifest.json")["splits"]


def test_a_crashed_run_resumes_from_its_finished_units(multi_unit, documents_dir, tmp_path):
    from bert_core.examples.generation import generate_examples, generate_unit, plan_examples

    config, one = multi_unit
    out = tmp_path / "examples"
    plan = plan_examples(config, documents_dir, out, tokens_dir=one.with_name("tokens"))
    finished = plan["units"][:3]
    for spec in finished:  # the run dies after three units: their part files are complete, nothing else is
        generate_unit(spec)
    parts = Path(plan["parts_dir"])
    stamps = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.arrow")}
    assert len(stamps) == 3 and not out.exists()
    generate_examples(config, documents_dir, out, tokens_dir=one.with_name("tokens"))
    assert _checksums(out) == _checksums(one)


def test_finished_units_are_not_generated_again(multi_unit, documents_dir, tmp_path):
    from bert_core.examples.generation import generate_unit, plan_examples

    config, one = multi_unit
    plan = plan_examples(config, documents_dir, tmp_path / "examples", tokens_dir=one.with_name("tokens"))
    spec = plan["units"][0]
    first = generate_unit(spec)
    part = Path(plan["parts_dir"]) / f"{spec['split']}-{spec['index']:06d}.arrow"
    before = part.stat().st_mtime_ns
    assert generate_unit(spec) == first and part.stat().st_mtime_ns == before


def test_random_next_segments_come_from_the_whole_split():
    from bert_core.examples.generation import ExamplesConfig, Unit, unit_examples

    docs = _synthetic_documents(num_docs=60)
    store = TokenStore.from_documents(docs)
    unit = Unit("train", 0, 10, 15, 0)  # five documents of sixty
    examples = unit_examples(store, unit, ExamplesConfig(max_seq_length=64, short_seq_prob=0.0, dupe_factor=5))
    assert examples.labels.mean() > 0.3
    sources = set()
    for i in np.flatnonzero(examples.labels == 1):
        ids = examples.input_ids[examples.offsets[i] : examples.offsets[i + 1]]
        b = ids[examples.token_type_ids[examples.offsets[i] : examples.offsets[i + 1]] == 1][:-1]  # B without [SEP]
        sources |= {_origin(int(t))[0] for t in b}
    outside = {d for d in sources if not 10 <= d < 15}
    assert len(outside) > 20  # drawn from all over the split, not from the unit's own documents


def test_examples_hold_exactly_the_tokens_of_their_spans():
    """[CLS] A [SEP] B [SEP] with A and B gathered from the right places, and token types 0 then 1."""
    from bert_core.examples.generation import ExamplesConfig, Unit, unit_examples
    from bert_core.examples.pairs import document_pairs

    docs = _synthetic_documents(num_docs=20)
    store = TokenStore.from_documents(docs)
    config = ExamplesConfig(max_seq_length=48)
    examples = unit_examples(store, Unit("train", 3, 0, 20, 0), config)
    rng = random.Random(f"bertflow-examples:{config.seed}:train:3")  # the unit's own stream
    spans = [p for i in range(20) for p in document_pairs(store, i, max_seq_length=48, short_seq_prob=0.1, rng=rng)]
    assert len(spans) == len(examples.offsets) - 1
    for i, span in enumerate(spans):
        pair = _Pair(store, span)
        ids = examples.input_ids[examples.offsets[i] : examples.offsets[i + 1]].tolist()
        assert ids == [2, *pair.tokens_a, 3, *pair.tokens_b, 3] and len(ids) <= 48
        types = examples.token_type_ids[examples.offsets[i] : examples.offsets[i + 1]].tolist()
        assert types == [0] * (len(pair.tokens_a) + 2) + [1] * (len(pair.tokens_b) + 1)
        assert examples.labels[i] == int(pair.is_random_next)


def test_full_sentences_objective_packs_every_token_once():
    from bert_core.examples.generation import ExamplesConfig, Unit, unit_examples

    docs = _synthetic_documents(num_docs=13)[1:]  # document 0's ids would collide with the special tokens
    docs[3][4] = list(range(30000 + 400, 30000 + 400 + 150))  # a sentence longer than an example: cut, not lost
    store = TokenStore.from_documents(docs)
    examples = unit_examples(store, Unit("train", 0, 0, 12, 0), ExamplesConfig(max_seq_length=64, pair_objective="none"))
    assert examples.labels is None
    lengths = np.diff(examples.offsets)
    assert lengths.max() <= 64 and np.median(lengths) > 48  # whole sentences packed up to the maximum
    body = [int(t) for t in examples.input_ids if t > 4]
    assert body == [t for d in docs for s in d for t in s]  # every token once, in corpus order
    for i in range(len(lengths)):
        ids = examples.input_ids[examples.offsets[i] : examples.offsets[i + 1]]
        assert ids[0] == 2 and ids[-1] == 3 and not (examples.token_type_ids[examples.offsets[i] : examples.offsets[i + 1]]).any()
        inner = ids[1:-1]
        # A [SEP] inside an example separates two documents.
        for k in np.flatnonzero(inner == 3):
            assert _origin(int(inner[k - 1]))[0] != _origin(int(inner[k + 1]))[0]


def test_full_sentences_shards_train_with_mlm_only(documents_dir, tmp_path):
    from dataclasses import replace

    import torch

    from bert_core.examples.generation import generate_examples
    from bert_core.training.data import PretrainingCollator
    from bert_core.training.model import PretrainingObjective, build_model
    from tests.conftest import TINY_EXAMPLES

    out = generate_examples(replace(TINY_EXAMPLES, pair_objective="none"), documents_dir, tmp_path / "roberta",
                            tokens_dir=tmp_path / "tokens")
    manifest = read_manifest(out / "train")
    assert "next_sentence_label" not in manifest["schema"] and manifest["quality"]["nsp_random_next_share"] is None
    assert manifest["quality"]["mean_length"] > 45  # whole sentences fill most of the 64 tokens
    dataset = ShardDataset(out / "train")
    batch = PretrainingCollator(vocab_size=2000)([dataset[i] for i in range(8)])
    assert "next_sentence_label" not in batch
    objective = PretrainingObjective(build_model("bert-tiny", vocab_size=2000, max_position_embeddings=64))
    result = objective(**batch)
    result["loss"].backward()
    assert torch.isfinite(result["loss"]) and result["nsp_count"] == 0
    assert objective.model.cls.seq_relationship.weight.grad is not None  # DDP sees every parameter used


def test_a_damaged_output_is_generated_again(documents_dir, tmp_path):
    from bert_core.examples.generation import generate_examples
    from tests.conftest import TINY_EXAMPLES

    out = generate_examples(TINY_EXAMPLES, documents_dir, tmp_path / "examples")
    expected = _checksums(out)
    shard = out / "train" / "shard-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated on disk
    generate_examples(TINY_EXAMPLES, documents_dir, out)
    verify_shards(out / "train")
    assert _checksums(out) == expected
