"""Flow: train a WordPiece tokenizer and write NSP + MLM examples into Arrow shards."""

from __future__ import annotations

from prefect import flow

from bert_core.examples import ExamplesConfig
from bert_core.masking import MaskingConfig
from bert_core.tokenizer import TokenizerConfig
from flows import default_work_dir
from tasks.examples import generate_examples


@flow(name="generate-examples")
def examples_flow(
    documents_dir: str,
    work_dir: str | None = None,
    vocab_size: int = TokenizerConfig.vocab_size,
    tokenizer_path: str | None = None,
    max_seq_length: int = ExamplesConfig.max_seq_length,
    short_seq_prob: float = ExamplesConfig.short_seq_prob,
    pair_objective: str = ExamplesConfig.pair_objective,
    dupe_factor: int = ExamplesConfig.dupe_factor,
    masking: str = ExamplesConfig.masking,
    mlm_probability: float = MaskingConfig.mlm_probability,
    max_predictions_per_seq: int = MaskingConfig.max_predictions_per_seq,
    whole_word_mask: bool = MaskingConfig.whole_word_mask,
    examples_per_shard: int = ExamplesConfig.examples_per_shard,
    seed: int = ExamplesConfig.seed,
) -> str:
    config = ExamplesConfig(
        max_seq_length=max_seq_length,
        short_seq_prob=short_seq_prob,
        pair_objective=pair_objective,
        dupe_factor=dupe_factor,
        masking=masking,
        examples_per_shard=examples_per_shard,
        seed=seed,
        tokenizer=TokenizerConfig(vocab_size=vocab_size, tokenizer_path=tokenizer_path),
        mlm=MaskingConfig(mlm_probability=mlm_probability, max_predictions_per_seq=max_predictions_per_seq,
                          whole_word_mask=whole_word_mask),
    )
    return generate_examples(config, documents_dir, str(default_work_dir(work_dir) / "examples"))
