import numpy as np
import pytest

from bert_core.examples.masking import MaskingConfig
from bert_core.examples.shards import ShardDataset
from bert_core.training.data import PretrainingCollator, epoch_batches


def test_epoch_batches_are_disjoint_across_ranks_and_deterministic():
    world = [epoch_batches(103, 8, seed=1, epoch=0, rank=r, world_size=3) for r in range(3)]
    assert len({len(b) for b in world}) == 1  # every rank runs the same number of steps
    seen = np.concatenate([np.concatenate(b) for b in world])
    assert len(seen) == len(set(seen.tolist())) == 96
    assert all((a == b).all() for a, b in zip(world[0], epoch_batches(103, 8, seed=1, epoch=0, rank=0, world_size=3)))
    other_epoch = epoch_batches(103, 8, seed=1, epoch=1, rank=0, world_size=3)
    assert not all((a == b).all() for a, b in zip(world[0], other_epoch))


def test_too_few_examples_for_a_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        epoch_batches(5, 4, seed=0, epoch=0, world_size=2)


def test_collator_pads_to_a_multiple_of_8_and_places_labels(examples_dir):
    dataset = ShardDataset(examples_dir / "train")
    items = [dataset[i] for i in range(5)]
    batch = PretrainingCollator(vocab_size=2000)(items)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(len(it["input_ids"]) for it in items)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        labelled = (batch["labels"][row] != -100).nonzero().flatten().numpy()
        assert (labelled == it["masked_lm_positions"]).all()
        assert (batch["labels"][row, labelled].numpy() == it["masked_lm_labels"]).all()


def test_dynamic_masking_in_the_collator(examples_dir):
    dataset = ShardDataset(examples_dir / "train")
    items = [{k: v for k, v in dataset[i].items() if not k.startswith("masked_lm")} for i in range(64)]
    collator = PretrainingCollator(vocab_size=2000, masking=MaskingConfig())
    a = collator(items, np.random.default_rng(0))
    b = collator(items, np.random.default_rng(0))
    c = collator(items, np.random.default_rng(1))
    assert (a["input_ids"] == b["input_ids"]).all() and not (a["input_ids"] == c["input_ids"]).all()
    rate = (a["labels"] != -100).sum().item() / (a["attention_mask"].sum().item() - 3 * 64)
    assert abs(rate - 0.15) < 0.02
    with pytest.raises(ValueError, match="dynamic masking"):
        PretrainingCollator(vocab_size=2000)(items)


def test_length_binned_batches_cut_padding_and_keep_every_example_once():
    from bert_core.training.data import padding_share

    rng = np.random.default_rng(3)
    lengths = np.where(rng.random(4096) < 0.1, rng.integers(10, 128, 4096), rng.integers(100, 129, 4096))
    plain = epoch_batches(4096, 16, seed=5, epoch=0, world_size=2, rank=0) + \
        epoch_batches(4096, 16, seed=5, epoch=0, world_size=2, rank=1)
    world = [epoch_batches(4096, 16, seed=5, epoch=0, rank=r, world_size=2, lengths=lengths) for r in range(2)]
    seen = np.concatenate([b for rank in world for b in rank])
    assert np.array_equal(np.sort(seen), np.arange(4096))  # each example once per epoch, ranks disjoint
    binned = world[0] + world[1]
    assert padding_share(binned, lengths) < padding_share(plain, lengths) / 3
    again = epoch_batches(4096, 16, seed=5, epoch=0, rank=0, world_size=2, lengths=lengths)
    assert all((a == b).all() for a, b in zip(world[0], again))
    # Steps are shuffled: consecutive steps are not in length order.
    means = [lengths[b].mean() for b in world[0]]
    assert not (np.all(np.diff(means) >= 0) or np.all(np.diff(means) <= 0))
