import numpy as np
import pytest

from bert_core.examples.masking import MaskingConfig, mask_sequence

VOCAB = 1000
IS_SPECIAL = np.zeros(VOCAB, dtype=bool)
IS_SPECIAL[:5] = True
IS_CONTINUATION = np.zeros(VOCAB, dtype=bool)
IS_CONTINUATION[500:] = True  # ids >= 500 play the role of "##" pieces


def _sequence(rng, length=128):
    ids = rng.integers(5, VOCAB, size=length)
    ids[0], ids[60], ids[-1] = 2, 3, 3  # [CLS] ... [SEP] ... [SEP]
    return ids


def _mask_many(config, n=3000, whole_word=False, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = _sequence(rng)
        out.append((ids, mask_sequence(ids, config=config, rng=rng, mask_token_id=4, vocab_size=VOCAB,
                                       num_special_tokens=5, is_special=IS_SPECIAL,
                                       is_continuation=IS_CONTINUATION if whole_word else None)))
    return out


def test_mask_rate_and_80_10_10():
    results = _mask_many(MaskingConfig(max_predictions_per_seq=128))
    positions = sum(len(m.positions) for _, m in results)
    maskable = sum(125 for _ in results)
    assert abs(positions / maskable - 0.15) < 0.005
    replaced = np.concatenate([m.input_ids[m.positions] for _, m in results])
    original = np.concatenate([m.labels for _, m in results])
    assert abs((replaced == 4).mean() - 0.8) < 0.01
    # Random replacements can hit the original id by chance (1/995); count them as "random" draws.
    unchanged = (replaced == original).mean()
    assert abs(unchanged - 0.1) < 0.01
    assert abs(((replaced != 4) & (replaced != original)).mean() - 0.1) < 0.01


def test_specials_are_never_masked_and_labels_are_originals():
    for ids, m in _mask_many(MaskingConfig(), n=500):
        assert not IS_SPECIAL[ids[m.positions]].any()
        assert (m.labels == ids[m.positions]).all()
        untouched = np.setdiff1d(np.arange(ids.size), m.positions)
        assert (m.input_ids[untouched] == ids[untouched]).all()
        replaced = m.input_ids[m.positions]
        random_draws = replaced[(replaced != 4) & (replaced != m.labels)]
        assert not IS_SPECIAL[random_draws].any()  # random replacements come from the non-special vocabulary


def test_max_predictions_per_seq_caps_the_count():
    for _, m in _mask_many(MaskingConfig(mlm_probability=0.5, max_predictions_per_seq=7), n=50):
        assert len(m.positions) == 7


def test_whole_word_masking_masks_words_together():
    for ids, m in _mask_many(MaskingConfig(whole_word_mask=True, max_predictions_per_seq=128), n=300, whole_word=True):
        chosen = set(m.positions.tolist())
        for p in m.positions:
            # A chosen continuation piece implies its word start (the previous piece) is chosen too...
            if IS_CONTINUATION[ids[p]] and not IS_SPECIAL[ids[p - 1]]:
                assert p - 1 in chosen
            # ...and a chosen piece's following continuation pieces are chosen with it.
            if p + 1 < ids.size and IS_CONTINUATION[ids[p + 1]]:
                assert p + 1 in chosen


def test_masking_is_deterministic_per_seed():
    a = _mask_many(MaskingConfig(), n=20, seed=3)
    b = _mask_many(MaskingConfig(), n=20, seed=3)
    assert all((x.input_ids == y.input_ids).all() for (_, x), (_, y) in zip(a, b))


@pytest.mark.parametrize("length", [2, 3])
def test_sequences_with_nothing_to_mask(length):
    ids = np.array([2, 3, 3][:length])
    m = mask_sequence(ids, config=MaskingConfig(), rng=np.random.default_rng(0), mask_token_id=4, vocab_size=VOCAB,
                      num_special_tokens=5, is_special=IS_SPECIAL)
    assert m.positions.size == 0 and (m.input_ids == ids).all()


def test_batched_masking_follows_the_same_rule():
    from bert_core.examples.masking import mask_sequences

    rng = np.random.default_rng(5)
    sequences = [_sequence(rng, length=int(n)) for n in rng.integers(64, 129, size=2000)]
    results = mask_sequences(sequences, config=MaskingConfig(max_predictions_per_seq=128), rng=rng, mask_token_id=4,
                             vocab_size=VOCAB, num_special_tokens=5, is_special=IS_SPECIAL, block_rows=300)
    masked_total = maskable_total = 0
    replaced, original = [], []
    for ids, m in zip(sequences, results):
        maskable = int((~IS_SPECIAL[ids]).sum())
        assert len(m.positions) == max(1, round(maskable * 0.15))  # the same count rule as mask_sequence
        assert (np.diff(m.positions) > 0).all() and not IS_SPECIAL[ids[m.positions]].any()
        assert (m.labels == ids[m.positions]).all() and m.input_ids.size == ids.size
        untouched = np.setdiff1d(np.arange(ids.size), m.positions)
        assert (m.input_ids[untouched] == ids[untouched]).all()
        masked_total += len(m.positions)
        maskable_total += maskable
        replaced.append(m.input_ids[m.positions])
        original.append(m.labels)
    replaced, original = np.concatenate(replaced), np.concatenate(original)
    assert abs(masked_total / maskable_total - 0.15) < 0.005
    assert abs((replaced == 4).mean() - 0.8) < 0.015
    assert abs(((replaced != 4) & (replaced != original)).mean() - 0.1) < 0.015
