"""Pretraining pairs as spans of token positions, gathered into `[CLS] A [SEP] B [SEP]` examples.

Pairs follow google-research/bert's create_pretraining_data.py: for each document, sentences are gathered into a
chunk until a target length is reached (max_seq_length - 3, or with probability `short_seq_prob` a random shorter
target); segment A is a random prefix of the chunk; with probability 0.5 (and always when the chunk has one
sentence) segment B is a random span of a different document of the whole split and the unused sentences are put
back, otherwise B is the rest of the chunk; the pair is then trimmed to fit, from the longer side, at the front or
the back at random. One deliberate difference: a chunk of a single sentence also draws the 50% coin (its
actual-next pair uses the neighbouring sentences) instead of always getting a random segment, which put google's
labels at ~62% random-next on Wikipedia text at max_seq_length 64. `pair_objective="sop"` gives ALBERT's sentence
order prediction; `"none"` packs full sentences up to max_seq_length (RoBERTa's FULL-SENTENCES: contiguous
sentences that may cross document boundaries, an extra [SEP] between documents, no pair label).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from bert_core.examples.token_store import TokenStore

CLS_ID, SEP_ID, MASK_ID, UNK_ID, NUM_SPECIAL = 2, 3, 4, 1, 5  # bert_core.examples.tokenizer.SPECIAL_TOKENS order


# A pair example as spans of token positions: (chunk_a, a_lo, a_hi, chunk_b, b_lo, b_hi, label), where tokens of A
# are `store.values(chunk_a)[a_lo:a_hi]`. Label 1 = B is a random segment (NSP) or the segments are swapped (SOP).
Pair = tuple[int, int, int, int, int, int, int]


def truncate_spans(a_lo: int, a_hi: int, b_lo: int, b_hi: int, max_num_tokens: int,
                   rng: random.Random) -> tuple[int, int, int, int]:
    """Trim the longer segment, one token at a time from its front or back at random, until the pair fits.

    Same distribution as google-research/bert's token-by-token loop (ties trim B), done in runs: while one side is
    longer, the next k removals all hit it, so k coins are drawn at once.
    """
    while (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
        len_a, len_b = a_hi - a_lo, b_hi - b_lo
        excess = len_a + len_b - max_num_tokens
        steps = max(1, min(excess, abs(len_a - len_b)))
        front = bin(rng.getrandbits(steps)).count("1")
        if len_a > len_b:
            a_lo, a_hi = a_lo + front, a_hi - (steps - front)
        else:
            b_lo, b_hi = b_lo + front, b_hi - (steps - front)
    return a_lo, a_hi, b_lo, b_hi


def document_pairs(store: TokenStore, index: int, *, max_seq_length: int, short_seq_prob: float,
                   rng: random.Random, pair_objective: str = "nsp") -> list[Pair]:
    """Sentence pairs from document `index` of `store` (google-research/bert's algorithm, see the module doc).

    With `pair_objective="sop"` (ALBERT's sentence-order prediction) B is always the actual continuation and the
    two segments are swapped with probability 0.5 (label 1 = swapped). Works on sentence boundaries only: no token
    is copied here.
    """
    if pair_objective not in {"nsp", "sop"}:
        raise ValueError(f"document_pairs makes 'nsp' or 'sop' pairs, not {pair_objective!r}")
    chunk_id, bounds = store.sentence_bounds(index)
    n = len(bounds) - 1
    max_num_tokens = max_seq_length - 3  # [CLS], [SEP], [SEP]
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)

    pairs: list[Pair] = []
    first = 0  # first sentence of the current chunk
    i = 0
    while i < n:
        if i == n - 1 or bounds[i + 1] - bounds[first] >= target:
            count = i - first + 1
            a_end = first + (rng.randint(1, count - 1) if count >= 2 else 1)
            a_lo, a_hi = bounds[first], bounds[a_end]
            b_chunk = chunk_id
            if count == 1 and n > 1 and (pair_objective == "sop" or rng.random() < 0.5):
                # A one-sentence chunk: google-research/bert always pairs it with a random segment, which skews the
                # labels towards random-next when sentences are long relative to max_seq_length. Here it draws the
                # coin too; its actual-next pair takes at least one neighbouring sentence (the following ones, or
                # at the end of the document the preceding ones before it), even when A alone fills the target.
                label = 0
                if i + 1 < n:
                    b_lo = bounds[i + 1]
                    i += 1
                    while i + 1 < n and (a_hi - a_lo) + (bounds[i + 1] - b_lo) < target:
                        i += 1
                    b_hi = bounds[i + 1]
                else:
                    b_lo, b_hi = bounds[i], bounds[i + 1]
                    j = i - 1
                    while j > 0 and (bounds[i] - bounds[j]) + (b_hi - b_lo) < target:
                        j -= 1
                    a_lo, a_hi = bounds[j], bounds[i]
            elif pair_objective == "sop":
                label = 0
                b_lo, b_hi = bounds[a_end], bounds[i + 1]  # empty for a one-sentence document: skipped below
            elif count == 1 or rng.random() < 0.5:
                label = 1
                target_b = target - (a_hi - a_lo)
                other = index
                for _ in range(10):
                    other = rng.randint(0, len(store) - 1)
                    if other != index:
                        break
                b_chunk, other_bounds = store.sentence_bounds(other)
                start = rng.randint(0, len(other_bounds) - 2)
                stop = start + 1
                while stop < len(other_bounds) - 1 and other_bounds[stop] - other_bounds[start] < target_b:
                    stop += 1
                b_lo, b_hi = other_bounds[start], other_bounds[stop]
                i -= count - (a_end - first)  # put the unused sentences back
            else:
                label = 0
                b_lo, b_hi = bounds[a_end], bounds[i + 1]
            if pair_objective == "sop" and b_hi > b_lo and rng.random() < 0.5:
                a_lo, a_hi, b_lo, b_hi, label = b_lo, b_hi, a_lo, a_hi, 1
            if (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
                a_lo, a_hi, b_lo, b_hi = truncate_spans(a_lo, a_hi, b_lo, b_hi, max_num_tokens, rng)
            if a_hi > a_lo and b_hi > b_lo:
                pairs.append((chunk_id, a_lo, a_hi, b_chunk, b_lo, b_hi, label))
            first = i + 1
        i += 1
    return pairs


def full_sentence_segments(store: TokenStore, start: int, stop: int, max_seq_length: int) -> list[list[tuple[int, int, int]]]:
    """RoBERTa's FULL-SENTENCES packing of documents [start, stop): each example a list of (chunk, lo, hi) segments.

    Whole sentences are added while `[CLS]` + segments + one `[SEP]` after each segment fit in max_seq_length; a
    document boundary starts a new segment (so an extra [SEP] separates documents). A sentence longer than the
    maximum is cut into pieces of the maximum length, so no token is lost.
    """
    examples: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    used = 1  # [CLS]
    for index in range(start, stop):
        chunk, bounds = store.sentence_bounds(index)
        open_segment = False
        for j in range(len(bounds) - 1):
            lo, hi = bounds[j], bounds[j + 1]
            cost = (hi - lo) + (0 if open_segment else 1)
            if used + cost > max_seq_length and current:
                examples.append(current)
                current, used, open_segment = [], 1, False
                cost = hi - lo + 1
            if used + cost > max_seq_length:  # one sentence longer than an example: pieces of the maximum
                piece = max_seq_length - 2
                while hi - lo > piece:
                    examples.append([(chunk, lo, lo + piece)])
                    lo += piece
                cost = hi - lo + 1
            if open_segment:
                c, seg_lo, _ = current[-1]
                current[-1] = (c, seg_lo, hi)
            else:
                current.append((chunk, lo, hi))
                open_segment = True
            used += cost
    if current:
        examples.append(current)
    return examples


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [s, s + n) for every (s, n)."""
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts - before, lengths) + np.arange(total)


@dataclass
class UnitExamples:
    """The examples of one unit, flat: sequence i is `input_ids[offsets[i]:offsets[i+1]]`."""

    input_ids: np.ndarray
    offsets: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray | None  # pair labels; None for pair_objective="none"
    keys: np.ndarray | None = None  # shuffle keys, ascending, when the examples were laid out in key order


def assemble(store: TokenStore, segment_example: np.ndarray, segment_chunk: np.ndarray, segment_lo: np.ndarray,
             segment_len: np.ndarray, segment_type: np.ndarray, num_examples: int) -> UnitExamples:
    """`[CLS] seg [SEP] seg [SEP] ...` for every example, gathered from the store in one pass per token chunk.

    Segments are listed in example order; a segment's tokens and the [SEP] after it get the segment's type id.
    """
    lengths = 1 + np.bincount(segment_example, weights=segment_len + 1, minlength=num_examples).astype(np.int64)
    offsets = np.zeros(num_examples + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    dtype = store.values(0).dtype if store.num_chunks else np.uint32
    out = np.empty(int(offsets[-1]), dtype=dtype)
    out[offsets[:-1]] = CLS_ID
    span = segment_len + 1
    before = np.cumsum(span) - span
    first_segment = np.searchsorted(segment_example, np.arange(num_examples))
    dst = offsets[segment_example] + 1 + before - before[first_segment[segment_example]]
    out[dst + segment_len] = SEP_ID
    order = np.argsort(segment_chunk, kind="stable")
    chunks, starts = np.unique(segment_chunk[order], return_index=True)
    for chunk, group in zip(chunks, np.split(order, starts[1:])):
        out[ranges(dst[group], segment_len[group])] = store.values(int(chunk))[ranges(segment_lo[group], segment_len[group])]
    types = np.zeros(out.size, dtype=np.uint8)
    typed = segment_type > 0
    if typed.any():
        types[ranges(dst[typed], segment_len[typed] + 1)] = np.repeat(segment_type[typed], segment_len[typed] + 1)
    return UnitExamples(out, offsets, types, None)
