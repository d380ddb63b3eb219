"""Quality figures of generated examples and the gates a split must pass (the examples stage fails on them).

Each unit's counts (`unit_statistics`) sum over units into the split's figures (`quality_from_statistics`): pair
label share, lengths, [UNK] rate, and for static masking the masked share and the 80/10/10 split. `check_quality`
compares them with their targets; `describe_examples` shows a few examples as a person reads them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bert_core.examples.pairs import MASK_ID, UNK_ID, UnitExamples
from bert_core.examples.shards import ShardDataset, read_manifest
from bert_core.examples.tokenizer import load_tokenizer


def unit_statistics(examples: UnitExamples, masked: tuple | None, is_special: np.ndarray, max_seq_length: int) -> dict[str, Any]:
    """Counts that sum over units into the split's quality figures (see `quality_from_statistics`)."""
    lengths = np.diff(examples.offsets)
    stats: dict[str, Any] = {
        "num_examples": int(lengths.size),
        "num_tokens": int(lengths.sum()),
        "max_length": int(lengths.max()) if lengths.size else 0,
        "label_sum": int(examples.labels.sum()) if examples.labels is not None else None,
        "unk": int((examples.input_ids == UNK_ID).sum()),
        "length_histogram": np.bincount(np.minimum(lengths, max_seq_length) // 16,
                                        minlength=max_seq_length // 16 + 1).tolist(),
    }
    if masked is not None:
        input_ids, positions, position_offsets, originals = masked
        rows = np.repeat(np.arange(lengths.size), np.diff(position_offsets))
        replaced = input_ids[examples.offsets[rows] + positions]
        stats.update({
            "num_masked": int(positions.size),
            "num_maskable": int((~is_special[examples.input_ids]).sum()),
            "mask_token": int((replaced == MASK_ID).sum()),
            "unchanged": int((replaced == originals).sum()),
            "random_token": int(((replaced != originals) & (replaced != MASK_ID)).sum()),
            "special_tokens_masked": int(is_special[originals].sum()),
        })
    return stats


def quality_from_statistics(stats: Iterable[dict[str, Any]], max_seq_length: int) -> dict[str, Any]:
    """Sum unit statistics into the figures the quality gates check and the manifest records."""
    stats = list(stats)
    total = {k: sum(s[k] for s in stats if s.get(k) is not None) for k in stats[0]
             if k not in ("length_histogram", "max_length", "split", "unit")}
    n = max(1, total["num_examples"])
    histogram = np.sum([s["length_histogram"] for s in stats], axis=0)
    quality: dict[str, Any] = {
        "num_examples": total["num_examples"],
        "nsp_random_next_share": total["label_sum"] / n if stats[0]["label_sum"] is not None else None,
        "mean_length": total["num_tokens"] / n,
        "max_length": max(s["max_length"] for s in stats),
        "unk_rate": total["unk"] / max(1, total["num_tokens"]),
        "length_histogram": [[f"{16 * b}-{min(16 * b + 15, max_seq_length)}", int(c)] for b, c in enumerate(histogram)],
    }
    if "num_masked" in total:
        masked = max(1, total["num_masked"])
        quality.update({
            "num_masked": total["num_masked"],
            "num_maskable": total["num_maskable"],
            "masked_share_of_maskable": total["num_masked"] / max(1, total["num_maskable"]),
            "mask_token_share": total["mask_token"] / masked,
            "unchanged_share": total["unchanged"] / masked,
            "random_token_share": total["random_token"] / masked,
            "special_tokens_masked": total["special_tokens_masked"],
        })
    return quality


def check_quality(quality: dict[str, Any], config: Any) -> list[str]:
    """The quality gates a split must pass; returns the failures (empty when it passes).

    Shares must lie within the stated tolerance of their target, widened to 4 standard errors on small splits
    (a 70-example validation split cannot show a 50% +- 2 pair balance even when generated correctly).
    """
    def tolerance(stated: float, p: float, n: int) -> float:
        return max(stated, 4 * math.sqrt(p * (1 - p) / max(1, n)))

    failures = []
    if quality["max_length"] > config.max_seq_length:
        failures.append(f"an example has {quality['max_length']} tokens > max_seq_length {config.max_seq_length}")
    share, n = quality["nsp_random_next_share"], quality["num_examples"]
    if share is not None and abs(share - 0.5) > tolerance(0.02, 0.5, n):
        failures.append(f"{config.pair_objective} label share {share:.3f} is not 0.5 +- {tolerance(0.02, 0.5, n):.3f}")
    if "num_masked" in quality:
        mlm = config.mlm
        if quality["special_tokens_masked"]:
            failures.append(f"{quality['special_tokens_masked']} special tokens were masked")
        rate = quality["masked_share_of_maskable"]
        tol = tolerance(0.005, mlm.mlm_probability, quality["num_maskable"])
        if abs(rate - mlm.mlm_probability) > tol:
            failures.append(f"masked share {rate:.4f} is not {mlm.mlm_probability} +- {tol:.4f}")
        keep = 1 - mlm.mask_replace_prob - mlm.random_replace_prob
        for name, target in (("mask_token_share", mlm.mask_replace_prob), ("random_token_share", mlm.random_replace_prob),
                             ("unchanged_share", keep)):
            tol = tolerance(0.02, target, quality["num_masked"])
            # A random replacement can draw the original token (1 / vocab): it then counts as unchanged.
            if abs(quality[name] - target) > tol + 1e-3:
                failures.append(f"{name} {quality[name]:.3f} is not {target} +- {tol:.3f}")
    return failures


def describe_examples(shards_dir: str | Path, n: int = 3) -> str:
    """Human-readable view of the first `n` examples of a split: tokens, masks with their targets, the pair label.

    `shards_dir` is a split directory (`<examples>/train`) or an examples directory (its train split is shown).
    """
    shards_dir = Path(shards_dir)
    if (shards_dir / "train").is_dir():
        shards_dir = shards_dir / "train"
    tokenizer = load_tokenizer(shards_dir.parent / "tokenizer")
    manifest = read_manifest(shards_dir)
    dataset = ShardDataset(shards_dir)
    objective = manifest.get("config", {}).get("pair_objective", "nsp")
    label_names = {"nsp": ("actual next", "random next"), "sop": ("in order", "swapped")}.get(objective)
    lines = [f"{shards_dir}: {manifest['num_examples']:,} examples in {manifest['num_shards']} shard(s), "
             f"{manifest['num_tokens']:,} tokens, masking {manifest['masking']}, objective {objective}"]
    for index in range(min(n, len(dataset))):
        item = dataset[index]
        tokens = tokenizer.convert_ids_to_tokens([int(t) for t in item["input_ids"]])
        targets = {}
        if "masked_lm_positions" in item:
            originals = tokenizer.convert_ids_to_tokens([int(t) for t in item["masked_lm_labels"]])
            targets = dict(zip((int(p) for p in item["masked_lm_positions"]), originals))
        shown = [f"{tok}<{targets[i]}>" if i in targets else tok for i, tok in enumerate(tokens)]
        label = (f"label {int(item['next_sentence_label'])} ({label_names[int(item['next_sentence_label'])]})"
                 if label_names else "no pair label")
        lines += ["", f"example {index}: {len(tokens)} tokens, {label}, {len(targets)} MLM targets", " ".join(shown)]
    return "\n".join(lines)
