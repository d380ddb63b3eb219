"""Masked-LM masking: choose ~15% of the maskable tokens, then 80% [MASK], 10% random token, 10% unchanged.

The same function serves static masking (positions written into the shards, as google-research/bert does) and
dynamic masking (applied to each batch in the training loop). It follows create_pretraining_data.py: the number of
predictions per sequence is round(mlm_probability * maskable tokens), capped at `max_predictions_per_seq`; with
`whole_word_mask`, a word's `##` continuation pieces are masked together with its first piece. Special tokens
([CLS], [SEP], [PAD]) are never chosen. Random replacements are drawn from the non-special vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class MaskingConfig:
    mlm_probability: float = 0.15
    max_predictions_per_seq: int = 20
    whole_word_mask: bool = False
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1


@dataclass(frozen=True)
class MaskedSequence:
    input_ids: np.ndarray  # the sequence with masked positions replaced
    positions: np.ndarray  # sorted positions that carry a prediction target
    labels: np.ndarray  # the original token id at each position


def mask_sequence(
    input_ids: np.ndarray,
    *,
    config: MaskingConfig,
    rng: np.random.Generator,
    mask_token_id: int,
    vocab_size: int,
    num_special_tokens: int,
    is_special: np.ndarray,
    is_continuation: np.ndarray | None = None,
) -> MaskedSequence:
    """Mask one sequence. `is_special`/`is_continuation` are boolean lookups over the vocabulary.

    Whole-word masking is handled here (its units differ per sequence); single tokens go through mask_sequences.
    """
    ids = np.asarray(input_ids)
    if not (config.whole_word_mask and is_continuation is not None):
        # Single tokens: one rule for one sequence or many, implemented once in mask_sequences.
        return mask_sequences([ids], config=config, rng=rng, mask_token_id=mask_token_id, vocab_size=vocab_size,
                              num_special_tokens=num_special_tokens, is_special=is_special)[0]
    maskable = np.flatnonzero(~is_special[ids])
    if not maskable.size:
        return MaskedSequence(ids.copy(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=ids.dtype))
    num_to_predict = min(config.max_predictions_per_seq, max(1, int(round(maskable.size * config.mlm_probability))))
    # Candidate units are whole words: continuation pieces join the unit before them (a piece right after a
    # special token starts a unit of its own). Units are taken in random order while they fit the budget.
    starts = ~is_continuation[ids[maskable]]
    starts[0] = True
    starts[1:] |= np.diff(maskable) != 1
    units = np.split(maskable, np.flatnonzero(starts)[1:])
    chosen: list[np.ndarray] = []
    count = 0
    for unit_index in rng.permutation(len(units)):
        if count >= num_to_predict:
            break
        unit = units[unit_index]
        if count + unit.size > num_to_predict:
            continue
        chosen.append(unit)
        count += unit.size
    positions = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    labels = ids[positions].copy()
    masked = ids.copy()
    draw = rng.random(positions.size)
    to_mask = draw < config.mask_replace_prob
    to_random = (draw >= config.mask_replace_prob) & (draw < config.mask_replace_prob + config.random_replace_prob)
    masked[positions[to_mask]] = mask_token_id
    masked[positions[to_random]] = rng.integers(num_special_tokens, vocab_size, size=int(to_random.sum()))
    return MaskedSequence(masked, positions.astype(np.int64), labels)


def mask_sequences(
    sequences: list[np.ndarray],
    *,
    config: MaskingConfig,
    rng: np.random.Generator,
    mask_token_id: int,
    vocab_size: int,
    num_special_tokens: int,
    is_special: np.ndarray,
    is_continuation: np.ndarray | None = None,
    block_rows: int = 4096,
) -> list[MaskedSequence]:
    """`mask_sequence` over many sequences, vectorised over blocks of them when masking single tokens.

    Same rule per sequence: round(mlm_probability * maskable) positions (capped), a uniform random subset of the
    maskable ones, then 80/10/10. Whole-word masking keeps the per-sequence path (its units differ per sequence).
    """
    if config.whole_word_mask and is_continuation is not None:
        return [mask_sequence(s, config=config, rng=rng, mask_token_id=mask_token_id, vocab_size=vocab_size,
                              num_special_tokens=num_special_tokens, is_special=is_special,
                              is_continuation=is_continuation) for s in sequences]
    out: list[MaskedSequence] = []
    for start in range(0, len(sequences), block_rows):
        block = sequences[start : start + block_rows]
        lengths = np.fromiter((len(s) for s in block), dtype=np.int64, count=len(block))
        width = int(lengths.max()) if len(block) else 0
        ids = np.zeros((len(block), width), dtype=np.int64)
        valid = np.arange(width)[None, :] < lengths[:, None]
        ids[valid] = np.concatenate(block) if len(block) else []
        maskable = valid & ~is_special[ids]
        counts = maskable.sum(axis=1)
        budget = np.minimum(config.max_predictions_per_seq,
                            np.maximum(1, np.rint(counts * config.mlm_probability).astype(np.int64)))
        budget = np.where(counts > 0, np.minimum(budget, counts), 0)
        # A uniform random subset of size `budget` per row: the `budget` smallest random keys among maskable slots.
        keys = np.where(maskable, rng.random(ids.shape), 2.0)
        ranks = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
        chosen = ranks < budget[:, None]
        draw = rng.random(ids.shape)
        to_mask = chosen & (draw < config.mask_replace_prob)
        to_random = chosen & (draw >= config.mask_replace_prob) & (draw < config.mask_replace_prob + config.random_replace_prob)
        masked = ids.copy()
        masked[to_mask] = mask_token_id
        masked[to_random] = rng.integers(num_special_tokens, vocab_size, size=int(to_random.sum()))
        for row, length in enumerate(lengths):
            positions = np.flatnonzero(chosen[row])
            out.append(MaskedSequence(masked[row, :length].astype(block[row].dtype if hasattr(block[row], "dtype") else np.int64),
                                      positions.astype(np.int64), ids[row, positions]))
    return out
