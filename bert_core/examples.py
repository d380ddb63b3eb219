"""The example-generation stage: WordPiece tokenizer + next-sentence-prediction pairs + MLM masks -> Arrow shards.

Pairs follow google-research/bert's create_pretraining_data.py: for each document, sentences are gathered into a
chunk until a target length is reached (max_seq_length - 3, or with probability `short_seq_prob` a random shorter
target); segment A is a random prefix of the chunk; with probability 0.5 (and always when the chunk has one
sentence) segment B is a random span of a different document and the unused sentences are put back, otherwise B is
the rest of the chunk; the pair is then trimmed to fit, one token at a time from the longer side, at the front or
the back at random. One deliberate difference: a chunk of a single sentence also draws the 50% coin (its actual-next
pair uses the neighbouring sentences) instead of always getting a random segment, which put google's labels at
~62% random-next on Wikipedia text at max_seq_length 64. `dupe_factor` passes over the corpus give each document several different pairings and masks.

This first version keeps one split's tokenized documents in memory; outputs are written atomically and reruns
with the same inputs and config are skipped.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bert_core import stage
from bert_core.masking import MaskingConfig, mask_sequences
from bert_core.shards import write_shards
from bert_core.tokenizer import SPECIAL_TOKENS, TokenizerConfig, continuation_mask, load_tokenizer, tokenizer_hash
from bert_core.tokens import TokenStore, tokenize_corpus, tokens_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ExamplesConfig:
    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    pair_objective: str = "nsp"  # "nsp": B is the actual next segment or a random one; "sop": A and B swapped or not
    dupe_factor: int = 1
    masking: str = "static"  # "static": masks in the shards; "dynamic": stored unmasked, masked per batch
    examples_per_shard: int = 8192
    seed: int = 12345
    quality_gates: bool = True  # fail the stage when the examples are not what BERT expects (see check_quality)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    mlm: MaskingConfig = field(default_factory=MaskingConfig)


@dataclass(frozen=True)
class PairExample:
    tokens_a: list[int]
    tokens_b: list[int]
    is_random_next: bool  # the pair label: NSP, B is a random segment; SOP, A and B are swapped


def truncate_seq_pair(tokens_a: list[int], tokens_b: list[int], max_num_tokens: int, rng: random.Random) -> None:
    """Trim the longer segment, one token at a time from its front or back at random, until the pair fits.

    Same distribution as google-research/bert's token-by-token loop, done in runs: while one side is longer, the
    next k removals all hit it, so k coins are drawn at once and the front and back are cut in one slice each.
    """
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        longer, shorter = (tokens_a, tokens_b) if len(tokens_a) > len(tokens_b) else (tokens_b, tokens_a)
        excess = len(tokens_a) + len(tokens_b) - max_num_tokens
        steps = max(1, min(excess, len(longer) - len(shorter)))
        front = bin(rng.getrandbits(steps)).count("1")
        del longer[:front]
        if steps - front:
            del longer[len(longer) - (steps - front):]


def create_pairs_from_document(
    documents: Sequence[Sequence[Sequence[int]]],
    document_index: int,
    *,
    max_seq_length: int,
    short_seq_prob: float,
    rng: random.Random,
    pair_objective: str = "nsp",
) -> list[PairExample]:
    """Sentence pairs from one document (a list of tokenized sentences), google-research/bert's algorithm.

    With `pair_objective="sop"` (ALBERT's sentence-order prediction) B is always the actual continuation and the
    two segments are swapped with probability 0.5 (label 1 = swapped).
    """
    if pair_objective not in {"nsp", "sop"}:
        raise ValueError(f"unknown pair_objective {pair_objective!r}; choose 'nsp' or 'sop'")
    document = documents[document_index]
    max_num_tokens = max_seq_length - 3  # [CLS], [SEP], [SEP]
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    pairs: list[PairExample] = []
    chunk: list[Sequence[int]] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        chunk.append(segment)
        chunk_length += len(segment)
        if i == len(document) - 1 or chunk_length >= target_seq_length:
            if chunk:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                tokens_a = [t for s in chunk[:a_end] for t in s]
                tokens_b: list[int] = []
                single = len(chunk) == 1
                if single and len(document) > 1 and (pair_objective == "sop" or rng.random() < 0.5):
                    # A one-sentence chunk: google-research/bert always pairs it with a random segment, which
                    # skews the labels towards random-next when sentences are long relative to max_seq_length.
                    # Here it draws the coin too; its actual-next pair is the following sentence(s) or, at the
                    # end of the document, the preceding sentence(s) followed by it.
                    is_random_next = False
                    # At least one neighbouring sentence, even when A alone already fills the target length
                    # (truncation trims the pair); otherwise long sentences would lose their actual-next pairs.
                    if i + 1 < len(document):
                        while i + 1 < len(document) and (not tokens_b or len(tokens_a) + len(tokens_b) < target_seq_length):
                            i += 1
                            tokens_b.extend(document[i])
                    else:
                        tokens_b, tokens_a = tokens_a, []
                        j = i
                        while j > 0 and (not tokens_a or len(tokens_a) + len(tokens_b) < target_seq_length):
                            j -= 1
                            tokens_a[:0] = document[j]
                elif pair_objective == "sop":
                    is_random_next = False
                    tokens_b = [t for s in chunk[a_end:] for t in s]  # empty for a one-sentence document: skipped
                elif single or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    random_index = document_index
                    for _ in range(10):
                        random_index = rng.randint(0, len(documents) - 1)
                        if random_index != document_index:
                            break
                    random_document = documents[random_index]
                    for j in range(rng.randint(0, len(random_document) - 1), len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    i -= len(chunk) - a_end  # put the unused sentences back
                else:
                    is_random_next = False
                    tokens_b = [t for s in chunk[a_end:] for t in s]
                if pair_objective == "sop" and tokens_b and rng.random() < 0.5:
                    tokens_a, tokens_b, is_random_next = tokens_b, tokens_a, True
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                if tokens_a and tokens_b:
                    pairs.append(PairExample(tokens_a, tokens_b, is_random_next))
            chunk = []
            chunk_length = 0
        i += 1
    return pairs


def build_examples(
    documents: Sequence[Sequence[Sequence[int]]], tokenizer, config: ExamplesConfig, *, seed: int, static_masks: bool
) -> dict[str, list]:
    """Pairs from all documents (dupe_factor passes), shuffled, as shard columns (masked if `static_masks`)."""
    rng = random.Random(seed)
    pairs: list[PairExample] = []
    for _ in range(config.dupe_factor):
        for index in range(len(documents)):
            pairs.extend(
                create_pairs_from_document(
                    documents, index, max_seq_length=config.max_seq_length, short_seq_prob=config.short_seq_prob, rng=rng,
                    pair_objective=config.pair_objective,
                )
            )
    rng.shuffle(pairs)
    cls_id, sep_id, mask_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    vocab_size = len(tokenizer)
    is_special = np.zeros(vocab_size, dtype=bool)
    is_special[[tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]] = True
    is_continuation = continuation_mask(tokenizer)
    np_rng = np.random.default_rng(seed)
    columns: dict[str, list] = {"input_ids": [], "token_type_ids": [], "next_sentence_label": []}
    if static_masks:
        columns["masked_lm_positions"] = []
        columns["masked_lm_labels"] = []
    sequences = []
    for pair in pairs:
        ids = np.array([cls_id, *pair.tokens_a, sep_id, *pair.tokens_b, sep_id], dtype=np.int64)
        types = np.zeros(ids.size, dtype=np.int64)
        types[len(pair.tokens_a) + 2 :] = 1
        sequences.append(ids)
        columns["token_type_ids"].append(types)
        # BertForPreTraining's convention: label 0 = B is the actual next segment, 1 = B is random.
        columns["next_sentence_label"].append(int(pair.is_random_next))
    if static_masks:
        for masked in mask_sequences(
            sequences, config=config.mlm, rng=np_rng, mask_token_id=mask_id, vocab_size=vocab_size,
            num_special_tokens=len(SPECIAL_TOKENS), is_special=is_special, is_continuation=is_continuation,
        ):
            columns["input_ids"].append(masked.input_ids)
            columns["masked_lm_positions"].append(masked.positions)
            columns["masked_lm_labels"].append(masked.labels)
    else:
        columns["input_ids"] = sequences
    return columns


def example_quality(columns: dict[str, list], tokenizer, max_seq_length: int) -> dict[str, Any]:
    """Figures that show whether the examples are what BERT expects: pair balance, mask rate, 80/10/10, lengths."""
    labels = np.asarray(columns["next_sentence_label"])
    lengths = np.fromiter((len(r) for r in columns["input_ids"]), dtype=np.int64)
    ids = np.concatenate(columns["input_ids"])
    edges = list(range(0, max_seq_length + 16, 16))
    histogram = np.histogram(lengths, bins=[*edges[:-1], max_seq_length + 1])[0]
    quality: dict[str, Any] = {
        "num_examples": int(len(lengths)),
        "nsp_random_next_share": float(labels.mean()),
        "mean_length": float(lengths.mean()),
        "max_length": int(lengths.max()),
        "unk_rate": float((ids == tokenizer.unk_token_id).mean()),
        "length_histogram": [[f"{lo}-{min(lo + 15, max_seq_length)}", int(c)] for lo, c in zip(edges, histogram)],
    }
    if "masked_lm_positions" in columns:
        positions = columns["masked_lm_positions"]
        num_masked = sum(len(p) for p in positions)
        maskable = int(lengths.sum()) - 3 * len(lengths)
        replaced = np.concatenate([ids_[p] for ids_, p in zip(columns["input_ids"], positions)])
        originals = np.concatenate(columns["masked_lm_labels"])
        quality.update({
            "num_masked": num_masked,
            "num_maskable": maskable,
            "masked_share_of_maskable": num_masked / max(1, maskable),
            "mask_token_share": float((replaced == tokenizer.mask_token_id).mean()),
            "unchanged_share": float((replaced == originals).mean()),
            "random_token_share": float(((replaced != originals) & (replaced != tokenizer.mask_token_id)).mean()),
            "special_tokens_masked": int((originals < len(SPECIAL_TOKENS)).sum()),
        })
    return quality


def check_quality(quality: dict[str, Any], config: ExamplesConfig) -> list[str]:
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
    if abs(share - 0.5) > tolerance(0.02, 0.5, n):
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


def generate_examples(config: ExamplesConfig, documents_dir: str | Path, output_dir: str | Path,
                      *, tokens_dir: str | Path | None = None) -> Path:
    """Run the stage: `output_dir/{tokenizer,train,validation}` with shards and manifests. Skips if up to date.

    The tokenized corpus goes to `tokens_dir` (default: a `tokens` directory beside `output_dir`) and is reused by
    every run on the same documents and tokenizer settings, e.g. a second phase at max_seq_length 512.
    """
    documents_dir, output_dir = Path(documents_dir), Path(output_dir)
    tokens_dir = Path(tokens_dir) if tokens_dir else output_dir.with_name("tokens")
    key = stage.hash_json({"config": config, "tokens": tokens_key(config.tokenizer, documents_dir), "version": 2})
    if stage.completed_stage(output_dir, key):
        logger.info("examples: %s is up to date, skipping", output_dir)
        return output_dir

    tokenize_corpus(config.tokenizer, documents_dir, tokens_dir)
    tokenizer = load_tokenizer(tokens_dir / "tokenizer")
    tok_hash = tokenizer_hash(tokenizer)
    inputs = stage.hash_file(tokens_dir / "manifest.json")

    with stage.atomic_directory(output_dir) as tmp:
        tokenizer.save_pretrained(tmp / "tokenizer")
        outputs = {}
        for split, seed_offset in (("train", 0), ("validation", 1)):
            documents = TokenStore(tokens_dir / f"tokens-{split}.arrow")
            if len(documents) < 2:
                raise ValueError(f"examples: the {split} split has {len(documents)} usable documents; NSP needs 2+")
            # Held-out evaluation always uses fixed (static) masks so that every model is scored on the same task.
            static = config.masking == "static" or split == "validation"
            columns = build_examples(documents, tokenizer, config, seed=config.seed + seed_offset, static_masks=static)
            quality = example_quality(columns, tokenizer, config.max_seq_length)
            failures = check_quality(quality, config)
            if failures and config.quality_gates:
                raise ValueError(f"examples: the {split} split fails its quality gates: " + "; ".join(failures)
                                 + " (set quality_gates=false to write it anyway)")
            manifest = write_shards(
                columns,
                tmp / split,
                vocab_size=len(tokenizer),
                examples_per_shard=config.examples_per_shard,
                metadata={
                    "split": split,
                    "masking": "static" if static else "dynamic",
                    "max_seq_length": config.max_seq_length,
                    "tokenizer_hash": tok_hash,
                    "documents": len(documents),
                    "input_hash": inputs,
                    "quality": quality,
                    "config": stage.to_jsonable(config),
                },
            )
            outputs[split] = {k: manifest[k] for k in ("num_examples", "num_tokens", "num_shards", "quality")}
            outputs[split]["quality_failures"] = failures
        stage.write_stage_record(tmp, key=key, stage="examples", config=config, outputs=outputs)
    logger.info("examples: %s", outputs)
    return output_dir


def describe_examples(shards_dir: str | Path, n: int = 3) -> str:
    """Human-readable view of the first `n` examples of a split: tokens, masks with their targets, the pair label.

    `shards_dir` is a split directory (`<examples>/train`) or an examples directory (its train split is shown).
    """
    from bert_core.data import ShardDataset
    from bert_core.shards import read_manifest

    shards_dir = Path(shards_dir)
    if (shards_dir / "train").is_dir():
        shards_dir = shards_dir / "train"
    tokenizer = load_tokenizer(shards_dir.parent / "tokenizer")
    manifest = read_manifest(shards_dir)
    dataset = ShardDataset(shards_dir)
    objective = manifest.get("config", {}).get("pair_objective", "nsp")
    label_names = {"nsp": ("actual next", "random next"), "sop": ("in order", "swapped")}[objective]
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
        lines += ["", f"example {index}: {len(tokens)} tokens, label {int(item['next_sentence_label'])} "
                      f"({label_names[int(item['next_sentence_label'])]}), {len(targets)} MLM targets",
                  " ".join(shown)]
    return "\n".join(lines)
