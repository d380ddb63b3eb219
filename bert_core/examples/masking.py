"""Masked-LM masking: choose ~15% of the maskable tokens, then 80% [MASK], 10% random token, 10% unchanged.

The same function serves static masking (positions written into the shards, as google-research/bert does) and
dynamic masking (applied to each batch in the training loop). It follows create_pretraining_data.py: the number of
predictions per sequence is round(mlm_probability * maskable tokens), capped at `max_predictions_per_seq` when set; with
`whole_word_mask`, a word's `##` continuation pieces are masked together with its first piece. Special tokens
([CLS], [SEP], [PAD]) are never chosen. Random replacements are drawn from the non-special vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Gt, Le

from bert_core.config import ConfigError, Fraction, PositiveInt, check_fields


@dataclass(frozen=True, kw_only=True)
class MaskingConfig:
    mlm_probability: Annotated[float, Gt(0), Le(1)] = 0.15  # share of the maskable tokens chosen as MLM targets
    # A cap on predictions per sequence (google-research/bert's flag: 20 at 128 tokens, 80 at 512). None: no cap, so
    # mlm_probability alone sets the share at any length (a fixed 20 would mask 4% of a 512-token sequence, or hold a
    # 30% setting at 16% of 128 tokens).
    max_predictions_per_seq: PositiveInt | None = None
    whole_word_mask: bool = False  # mask every piece of a word together
    mask_replace_prob: Fraction = 0.8  # share of the targets replaced by [MASK]
    random_replace_prob: Fraction = 0.1  # share of the targets replaced by a random token (the rest kept)

    def __post_init__(self):
        check_fields(self)
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ConfigError(f"MaskingConfig: mask_replace_prob + random_replace_prob is "
                              f"{self.mask_replace_prob + self.random_replace_prob}; expected at most 1")



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

    Whole-word masking is handled here (its units differ per sequence); single tokens go through mask_flat.
    """
    ids = np.asarray(input_ids)
    if not (config.whole_word_mask and is_continuation is not None):
        # Single tokens: one rule for one sequence or many, implemented once in mask_flat.
        return mask_sequences([ids], config=config, rng=rng, mask_token_id=mask_token_id, vocab_size=vocab_size,
                              num_special_tokens=num_special_tokens, is_special=is_special)[0]
    maskable = np.flatnonzero(~is_special[ids])
    if not maskable.size:
        return MaskedSequence(ids.copy(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=ids.dtype))
    num_to_predict = int(_budgets(np.asarray([maskable.size]), config)[0])
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
    _replace(masked, positions, config=config, rng=rng, mask_token_id=mask_token_id, vocab_size=vocab_size,
             num_special_tokens=num_special_tokens)
    return MaskedSequence(masked, positions.astype(np.int64), labels)


def _replace(ids: np.ndarray, positions: np.ndarray, *, config: MaskingConfig, rng: np.random.Generator,
             mask_token_id: int, vocab_size: int, num_special_tokens: int) -> None:
    """The 80/10/10 rule, in place: each chosen position becomes [MASK], a random non-special token, or stays."""
    draw = rng.random(positions.size)
    to_mask = draw < config.mask_replace_prob
    to_random = ~to_mask & (draw < config.mask_replace_prob + config.random_replace_prob)
    ids[positions[to_mask]] = mask_token_id
    ids[positions[to_random]] = rng.integers(num_special_tokens, vocab_size, size=int(to_random.sum()))


def _budgets(counts: np.ndarray, config: MaskingConfig) -> np.ndarray:
    """Predictions per sequence: round(p * maskable), at least 1, at most max_predictions_per_seq and maskable."""
    budget = np.maximum(1, np.rint(counts * config.mlm_probability).astype(np.int64))
    if config.max_predictions_per_seq is not None:
        budget = np.minimum(config.max_predictions_per_seq, budget)
    return np.where(counts > 0, np.minimum(budget, counts), 0)


def mask_flat(
    ids: np.ndarray,
    offsets: np.ndarray,
    *,
    config: MaskingConfig,
    rng: np.random.Generator,
    mask_token_id: int,
    vocab_size: int,
    num_special_tokens: int,
    is_special: np.ndarray,
    is_continuation: np.ndarray | None = None,
    block_rows: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mask sequences stored flat (`ids[offsets[i]:offsets[i+1]]` is sequence i), as the shards store them.

    Returns (masked ids, positions, position offsets, labels): the positions of sequence i (relative to its start,
    sorted) are `positions[position_offsets[i]:position_offsets[i+1]]`, with their original ids in `labels`.
    Single-token masking is vectorised over blocks of sequences: a uniform random subset of `budget` maskable
    positions per row is the set of its `budget` smallest random keys. Whole-word masking goes sequence by sequence.
    """
    ids = np.asarray(ids)
    offsets = np.asarray(offsets, dtype=np.int64)
    num_rows = len(offsets) - 1
    masked = ids.copy()
    if config.whole_word_mask and is_continuation is not None:
        results = [mask_sequence(ids[offsets[r] : offsets[r + 1]], config=config, rng=rng, mask_token_id=mask_token_id,
                                 vocab_size=vocab_size, num_special_tokens=num_special_tokens, is_special=is_special,
                                 is_continuation=is_continuation) for r in range(num_rows)]
        for r, m in enumerate(results):
            masked[offsets[r] : offsets[r + 1]] = m.input_ids
        counts = np.fromiter((m.positions.size for m in results), dtype=np.int64, count=num_rows)
        position_offsets = np.concatenate([[0], np.cumsum(counts)])
        positions = np.concatenate([m.positions for m in results]) if num_rows else np.zeros(0, np.int64)
        labels = np.concatenate([m.labels for m in results]) if num_rows else np.zeros(0, ids.dtype)
        return masked, positions.astype(np.int64), position_offsets, labels.astype(ids.dtype)

    positions_out, counts_out, flat_chosen = [], [], []
    for start in range(0, num_rows, block_rows):
        stop = min(num_rows, start + block_rows)
        lengths = offsets[start + 1 : stop + 1] - offsets[start:stop]
        width = int(lengths.max()) if lengths.size else 0
        columns = np.arange(width)
        valid = columns[None, :] < lengths[:, None]
        index = np.where(valid, offsets[start:stop, None] + columns[None, :], 0)
        maskable = valid & ~is_special[ids[index]]
        budget = _budgets(maskable.sum(axis=1), config)
        keys = np.where(maskable, rng.random(maskable.shape), 2.0)
        # The budget-th smallest key of each row is the threshold; keys are continuous, so ties do not occur.
        threshold = np.take_along_axis(np.sort(keys, axis=1), np.maximum(budget - 1, 0)[:, None], axis=1)
        chosen = maskable & (keys <= threshold) & (budget > 0)[:, None]
        rows, cols = np.nonzero(chosen)  # row-major: positions come out sorted within each row
        positions_out.append(cols)
        counts_out.append(np.bincount(rows, minlength=stop - start))
        flat_chosen.append(index[rows, cols])
    chosen_flat = np.concatenate(flat_chosen) if flat_chosen else np.zeros(0, np.int64)
    labels = ids[chosen_flat]
    _replace(masked, chosen_flat, config=config, rng=rng, mask_token_id=mask_token_id, vocab_size=vocab_size,
             num_special_tokens=num_special_tokens)
    counts = np.concatenate(counts_out) if counts_out else np.zeros(0, np.int64)
    position_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    positions = np.concatenate(positions_out).astype(np.int64) if positions_out else np.zeros(0, np.int64)
    return masked, positions, position_offsets, labels


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
    """`mask_flat` over a list of sequences (the dynamic-masking collator's view), one MaskedSequence each."""
    if not sequences:
        return []
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])])
    ids = np.concatenate([np.asarray(s) for s in sequences])
    masked, positions, position_offsets, labels = mask_flat(
        ids, offsets, config=config, rng=rng, mask_token_id=mask_token_id, vocab_size=vocab_size,
        num_special_tokens=num_special_tokens, is_special=is_special, is_continuation=is_continuation,
        block_rows=block_rows)
    return [MaskedSequence(masked[offsets[i] : offsets[i + 1]], positions[position_offsets[i] : position_offsets[i + 1]],
                           labels[position_offsets[i] : position_offsets[i + 1]]) for i in range(len(sequences))]
