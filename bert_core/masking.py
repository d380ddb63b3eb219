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
    """Mask one sequence. `is_special`/`is_continuation` are boolean lookups over the vocabulary."""
    ids = np.asarray(input_ids)
    maskable = np.flatnonzero(~is_special[ids])
    if not maskable.size:
        return MaskedSequence(ids.copy(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=ids.dtype))
    num_to_predict = min(config.max_predictions_per_seq, max(1, int(round(maskable.size * config.mlm_probability))))
    if config.whole_word_mask and is_continuation is not None:
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
    else:
        # Single tokens: a uniform random subset of the maskable positions.
        positions = np.sort(rng.choice(maskable, size=min(num_to_predict, maskable.size), replace=False))
    labels = ids[positions].copy()
    masked = ids.copy()
    draw = rng.random(positions.size)
    to_mask = draw < config.mask_replace_prob
    to_random = (draw >= config.mask_replace_prob) & (draw < config.mask_replace_prob + config.random_replace_prob)
    masked[positions[to_mask]] = mask_token_id
    masked[positions[to_random]] = rng.integers(num_special_tokens, vocab_size, size=int(to_random.sum()))
    return MaskedSequence(masked, positions.astype(np.int64), labels)
