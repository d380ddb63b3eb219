"""Corpus-wide deduplication: exact and near duplicates, and the word hashes that decontamination shares.

Documents are compared as sequences of normalised words (lower-cased, apostrophes and PTB contraction splits
undone, punctuation dropped), each word hashed to a stable 64-bit value. Words are runs of Unicode letters and
digits with their combining marks (so Cyrillic, Greek, Arabic, Hebrew or Devanagari text has words, not an empty
sequence that would make every such document a duplicate of the first), and each CJK ideograph or kana is a word
of its own, since Chinese and Japanese text has no spaces:
- exact duplicates: the same normalised word sequence (sha1 of it);
- near duplicates: MinHash over word 5-gram shingles (rensa's Rust `RMinHash` by default: 21x datasketch's speed on
  the same shingles at the same recall of planted near duplicates, `python bench/dedup.py minhash`; `minhash=
  "datasketch"` keeps the pure-Python one) with LSH banding, a candidate confirmed when its
  estimated Jaccard similarity reaches `near_dedup_threshold`; the first document in corpus order is kept;
- contamination (`bert_core.ingest.decontamination`) compares word n-grams in the same normalised form.
Signatures are computed per document (in parallel, per input file). `reject_documents` decides across the whole
corpus: contamination, then exact duplicates (first in corpus order kept), then near duplicates among the rest, both
with `bert_core.ingest.near_dedup` (keys and bands sorted on disk, memory independent of the corpus size).
`NearDuplicateIndex`, the in-memory greedy index (one signature per kept document), stays as the reference the
tests and benchmark compare with.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pyarrow.parquet as pq
from annotated_types import Gt, Le

from bert_core.config import PositiveInt, check_fields
from bert_core.ingest.near_dedup import exact_duplicates, near_duplicates, write_exact_keys

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Combining marks of scripts whose vowel signs and diacritics are not word characters to `re` (Mn/Mc categories).
_MARKS = ("\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed"
          "\u0900-\u0dff\u0e00-\u0eff\u1000-\u109f")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_WORD = re.compile(f"[\\w{_MARKS}]+")  # after "_" -> " " and spaces around CJK: one character class, fast
_PTB_CONTRACTION = re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b")
_GRAM_BASE = np.uint64(0x100000001B3)  # FNV prime: mixes word hashes into n-gram hashes


MINHASH_LIBRARIES = ("rensa", "datasketch")


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    exact: bool = True  # drop documents whose normalised text repeats an earlier one's
    near: bool = True  # drop near-duplicates (MinHash LSH over word shingles)
    near_dedup_threshold: Annotated[float, Gt(0), Le(1)] = 0.8  # the Jaccard similarity above which two documents are near-duplicates
    num_perm: PositiveInt = 128  # MinHash permutations
    shingle_size: PositiveInt = 5  # words per shingle
    seed: int = 1  # the MinHash seed
    minhash: Literal[MINHASH_LIBRARIES] = "rensa"  # the signature library, "rensa" or "datasketch": part of the stage keys (they differ)
    decontamination_ngram: PositiveInt = 13  # a document sharing a word n-gram this long with an evaluation text is dropped
    min_eval_words: PositiveInt = 8  # evaluation texts shorter than this are matched whole, not by n-grams

    def __post_init__(self):
        check_fields(self)


_word_cache: dict[str, int] = {}


def normalized_words(text: str) -> list[str]:
    text = _PTB_CONTRACTION.sub(r"\1", text.lower()).replace("'", "").replace("\u2019", "").replace("_", " ")
    if _CJK_CHAR.search(text):
        text = _CJK_CHAR.sub(r" \g<0> ", text)
    return _WORD.findall(text)


def word_hashes(words: list[str]) -> np.ndarray:
    """A stable 64-bit hash per word (cached: corpora repeat their vocabulary)."""
    cache = _word_cache
    missing = set(words).difference(cache)
    if len(cache) + len(missing) > 50_000:
        cache.clear()  # keep memory flat however large the corpus vocabulary grows
        missing = set(words)
    for w in missing:
        cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
    return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hashes of every window of n word hashes (wrapping uint64 arithmetic)."""
    count = hashes.size - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    acc = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * _GRAM_BASE + hashes[k : k + count]
    return acc


def content_hash(words: list[str]) -> str:
    return hashlib.sha1(" ".join(words).encode()).hexdigest()


def minhash_signature(hashes: np.ndarray, config: DedupConfig) -> np.ndarray:
    """The MinHash signature (num_perm uint64) of a document's word shingles."""
    shingles = ngram_hashes(hashes, min(config.shingle_size, max(1, hashes.size)))
    if config.minhash == "rensa":
        import rensa  # lazy: only the configured MinHash library is imported

        rows = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
            shingles, np.array([0, shingles.size], dtype=np.uint64), config.num_perm, config.seed).to_rows()
        return np.asarray(rows[0], dtype=np.uint64)
    from datasketch import MinHash  # lazy: only the configured MinHash library is imported

    minhash = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=int, scheme="affine32")
    # datasketch's permutations expect 32-bit input hashes.
    minhash.update_batch((shingles & np.uint64(0xFFFFFFFF)).tolist())
    return minhash.hashvalues.astype(np.uint64)


class NearDuplicateIndex:
    """MinHash LSH over the documents kept so far; `seen_before` answers and then remembers. In memory (1 KB per
    kept document): the reference `bert_core.ingest.near_dedup` is measured against, not what the ingest stage runs."""

    def __init__(self, config: DedupConfig):
        from datasketch import MinHashLSH  # lazy: the in-memory reference index only (tests, bench)

        self.config = config
        self._lsh = MinHashLSH(threshold=config.near_dedup_threshold, num_perm=config.num_perm)
        self._signatures: dict[str, np.ndarray] = {}

    def seen_before(self, key: str, signature: np.ndarray) -> bool:
        from datasketch import LeanMinHash  # lazy: the in-memory reference index only (tests, bench)

        minhash = LeanMinHash(seed=self.config.seed, hashvalues=signature, scheme="affine32")
        for candidate in self._lsh.query(minhash):
            if float(np.mean(self._signatures[candidate] == signature)) >= self.config.near_dedup_threshold:
                return True
        self._lsh.insert(key, minhash)
        self._signatures[key] = signature
        return False


KEPT, CONTAMINATED, DUPLICATE, NEAR_DUPLICATE = 0, 1, 2, 3  # reason codes of `reject_documents`


def reject_documents(part_files: list[Path], config: DedupConfig, work_dir: str | Path,
                     executor=None) -> list[np.ndarray]:
    """Per part (ingest part files in corpus order), each document's code: KEPT, CONTAMINATED, DUPLICATE or
    NEAR_DUPLICATE, the first that applies. Exact duplicates keep the first copy in corpus order; near duplicates
    are found among the documents left (`near_dedup.near_duplicates`, its units on `executor`). Both are sorted
    and merged on disk (`bert_core.ingest.near_dedup`). Memory: one part at a time, one key range of a merge, and one
    byte per document for the codes."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    codes, signature_files, key_files, first = [], [], [], 0
    for index, path in enumerate(part_files):
        columns = ["contamination", *(["content_hash"] if config.exact else []),
                   *(["signature"] if config.near else [])]
        table = pq.read_table(path, columns=columns)
        code = np.zeros(table.num_rows, dtype=np.int8)
        code[np.asarray(table.column("contamination")) > 0] = CONTAMINATED
        if config.exact:
            key_files.append(write_exact_keys(work_dir / f"exact-{index:06d}.npy",
                                              table.column("content_hash").to_pylist(), code == KEPT, first))
        if config.near:
            signature_files.append(work_dir / f"signatures-{index:06d}.npy")
            signatures = b"".join(table.column("signature").to_pylist())
            np.save(signature_files[-1], np.frombuffer(signatures, dtype=np.uint64).reshape(-1, config.num_perm))
        codes.append(code)
        first += table.num_rows
    if config.exact and key_files:
        _mark(codes, exact_duplicates(key_files), DUPLICATE)
    if config.near and signature_files:
        near_parts = []
        for index, code in enumerate(codes):
            eligible_file = work_dir / f"eligible-{index:06d}.npy"
            np.save(eligible_file, code == KEPT)
            near_parts.append({"signatures_file": str(signature_files[index]), "eligible_file": str(eligible_file)})
        duplicates = near_duplicates(near_parts, threshold=config.near_dedup_threshold, num_perm=config.num_perm,
                                     work_dir=work_dir / "bands", executor=executor)
        _mark(codes, duplicates, NEAR_DUPLICATE)
    return codes


def _mark(codes: list[np.ndarray], ordinals: np.ndarray, value: int) -> None:
    """Set `value` on the documents at corpus-wide `ordinals` (numbering every row of every part in order)."""
    offsets = np.cumsum([0] + [c.size for c in codes])
    for index, code in enumerate(codes):
        rows = ordinals[(ordinals >= offsets[index]) & (ordinals < offsets[index + 1])] - offsets[index]
        code[rows.astype(np.int64)] = value


