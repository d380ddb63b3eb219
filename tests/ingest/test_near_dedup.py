"""Near dedup on disk (bert_core.ingest.near_dedup): planted duplicates found, the in-memory index's answer, the same
set for any number of workers and any merge range size."""

import numpy as np

from bert_core import stage
from bert_core.ingest import near_dedup
from bert_core.ingest.dedup import DedupConfig, NearDuplicateIndex, minhash_signature

CONFIG = DedupConfig()


def _corpus(seed=0, bases=60, words=300):
    """Base documents of random words; after each, variants at 0.5% and 1% word edits (near duplicates: Jaccard of
    5-word shingles ~0.95 and ~0.9, which MinHash LSH at 0.8 finds with probability ~0.998 and ~0.93) and at 30%
    (different documents). Returns the signatures per part (3 parts) and the planted
    duplicates' ordinals."""
    rng = np.random.default_rng(seed)
    signatures, planted = [], set()
    for _ in range(bases):
        base = rng.integers(1, 2**63, size=words, dtype=np.uint64)
        for rate in (0.0, 0.005, 0.01, 0.3):
            doc = base.copy()
            edit = rng.random(words) < rate
            doc[edit] = rng.integers(1, 2**63, size=int(edit.sum()), dtype=np.uint64)
            if 0 < rate < 0.1:
                planted.add(len(signatures))
            signatures.append(minhash_signature(doc, CONFIG))
    signatures = np.stack(signatures)
    return np.array_split(signatures, 3), planted


def _parts(tmp_path, chunks, eligible=None):
    parts = []
    for i, chunk in enumerate(chunks):
        sig, ok = tmp_path / f"sig-{i}.npy", tmp_path / f"ok-{i}.npy"
        np.save(sig, chunk)
        np.save(ok, np.ones(len(chunk), dtype=bool) if eligible is None else eligible[i])
        parts.append({"signatures_file": str(sig), "eligible_file": str(ok)})
    return parts


def _in_memory(chunks, skip=()):
    index = NearDuplicateIndex(CONFIG)
    flat = np.concatenate(chunks)
    return {i for i, signature in enumerate(flat) if i not in skip and index.seen_before(str(i), signature)}


def _run(tmp_path, parts, name, executor=None):
    return set(near_dedup.near_duplicates(parts, threshold=CONFIG.near_dedup_threshold, num_perm=CONFIG.num_perm,
                                          work_dir=tmp_path / name, executor=executor).tolist())


def test_planted_near_duplicates_are_found_as_the_in_memory_index_finds_them(tmp_path):
    chunks, planted = _corpus()
    found = _run(tmp_path, _parts(tmp_path, chunks), "bands")
    assert found == _in_memory(chunks)
    assert found <= planted  # no false positive: 30%-edited documents and the bases are kept
    assert len(found) >= 0.9 * len(planted)  # recall


def test_the_result_does_not_depend_on_workers_or_merge_ranges(tmp_path, monkeypatch):
    chunks, _ = _corpus(seed=1)
    parts = _parts(tmp_path, chunks)
    one = _run(tmp_path, parts, "one")
    with stage.worker_pool(2, preload=["bert_core.ingest.near_dedup"]) as pool:
        two = _run(tmp_path, parts, "two", executor=pool)
    monkeypatch.setattr(near_dedup, "_RANGE_ENTRIES", 7)  # a band's merge in many small hash ranges
    ranges = _run(tmp_path, parts, "ranges")
    assert one == two == ranges and one


def test_documents_rejected_before_neither_keep_nor_lose_others(tmp_path):
    chunks, _ = _corpus(seed=2, bases=10)
    eligible = [np.ones(len(c), dtype=bool) for c in chunks]
    eligible[0][0] = False  # the first base document was rejected already (say, contaminated)
    found = _run(tmp_path, _parts(tmp_path, chunks, eligible), "bands")
    assert 0 not in found and 1 not in found  # its first near copy is now the first of its cluster: kept
    assert found == _in_memory(chunks, skip={0}) and len(found) > 10


def test_band_parameters_are_datasketchs():
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    assert near_dedup.band_parameters(0.8, 128) == (lsh.b, lsh.r)


def test_exact_duplicates_on_disk_keep_the_first_copy_as_a_seen_set_does(tmp_path, monkeypatch):
    """Content hashes repeated within and across parts, some documents not eligible: the on-disk merge drops every
    copy but the first in corpus order, as the in-memory `seen` set did, for any merge range size."""
    import hashlib

    rng = np.random.default_rng(3)
    texts = [f"document {int(i)}" for i in rng.integers(0, 40, size=300)]  # ~40 distinct contents, many copies
    hashes = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    eligible = rng.random(300) > 0.1  # e.g. contaminated: neither kept nor a first copy
    seen, expected = set(), set()
    for i, h in enumerate(hashes):
        if eligible[i]:
            (expected.add(i) if h in seen else seen.add(h))
    bounds = [0, 70, 70, 180, 300]  # 4 parts, one of them empty
    files = [near_dedup.write_exact_keys(tmp_path / f"keys-{p}.npy", hashes[a:b], eligible[a:b], a)
             for p, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    found = near_dedup.exact_duplicates(files)
    monkeypatch.setattr(near_dedup, "_RANGE_ENTRIES", 5)  # the merge in many small key ranges
    assert set(found.tolist()) == expected == set(near_dedup.exact_duplicates(files).tolist())
    assert len(expected) > 200 and list(found) == sorted(found)
