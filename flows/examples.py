"""Flow: train a WordPiece tokenizer and write pretraining examples (NSP/SOP pairs or full sentences) into shards.

Units of work run in parallel on the flow's task runner: threads by default, a local Dask cluster of `n_workers`
processes, or an existing Dask scheduler at `dask_address`. The shards are the same bytes however they run.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow

from bert_core import stage
from bert_core.examples import ExamplesConfig
from bert_core.masking import MaskingConfig
from bert_core.tokenizer import TokenizerConfig
from flows import PairObjective, PositiveInt, SeqLength, balanced_batches, dask_task_runner, default_work_dir
from tasks.examples import finish_examples, generate_units, plan_examples, report_examples


@flow(name="generate-example-units")
def units_flow(units: list[dict], num_batches: int = 8) -> list[dict]:
    """Every unit's statistics, in plan order; batches of units run in parallel on the flow's task runner."""
    batches = balanced_batches(units, [u["tokens"] for u in units], num_batches)
    futures = generate_units.map(batches)
    by_unit = {(s["split"], s["unit"]): s for future in futures for s in future.result()}
    return [by_unit[(u["split"], u["index"])] for u in units]


@flow(name="generate-examples")
def examples_flow(
    documents_dir: str,
    work_dir: str | None = None,
    vocab_size: PositiveInt = TokenizerConfig.vocab_size,
    tokenizer_path: str | None = None,
    max_seq_length: SeqLength = ExamplesConfig.max_seq_length,
    short_seq_prob: float = ExamplesConfig.short_seq_prob,
    pair_objective: PairObjective = ExamplesConfig.pair_objective,
    dupe_factor: PositiveInt = ExamplesConfig.dupe_factor,
    masking: Literal["static", "dynamic"] = ExamplesConfig.masking,
    mlm_probability: float = MaskingConfig.mlm_probability,
    max_predictions_per_seq: PositiveInt | None = MaskingConfig.max_predictions_per_seq,
    whole_word_mask: bool = MaskingConfig.whole_word_mask,
    examples_per_shard: PositiveInt = ExamplesConfig.examples_per_shard,
    seed: int = ExamplesConfig.seed,
    unit_tokens: PositiveInt = ExamplesConfig.unit_tokens,
    n_workers: PositiveInt = 1,
    dask_address: str | None = None,
) -> str:
    """`pair_objective`: "nsp" (BERT), "sop" (ALBERT) or "none" (RoBERTa full sentences, MLM only)."""
    config = ExamplesConfig(
        max_seq_length=max_seq_length,
        short_seq_prob=short_seq_prob,
        pair_objective=pair_objective,
        dupe_factor=dupe_factor,
        masking=masking,
        examples_per_shard=examples_per_shard,
        seed=seed,
        unit_tokens=unit_tokens,
        tokenizer=TokenizerConfig(vocab_size=vocab_size, tokenizer_path=tokenizer_path),
        mlm=MaskingConfig(mlm_probability=mlm_probability, max_predictions_per_seq=max_predictions_per_seq,
                          whole_word_mask=whole_word_mask),
    )
    plan = plan_examples(stage.to_jsonable(config), documents_dir, str(default_work_dir(work_dir) / "examples"))
    if plan["up_to_date"]:
        report_examples(plan["output_dir"])
        return plan["output_dir"]
    run_units = units_flow
    if n_workers > 1 or dask_address:
        run_units = units_flow.with_options(task_runner=dask_task_runner(n_workers, dask_address))
    stats = run_units(plan["units"], num_batches=4 * max(1, n_workers))
    return finish_examples(plan, stats)
