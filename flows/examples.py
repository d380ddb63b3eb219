"""Flow: train a WordPiece tokenizer and write pretraining examples (NSP/SOP pairs or full sentences) into shards.

Units of work (tokenizing, then generating) run in parallel on the flow's task runner: threads by default, one local
Dask cluster of `n_workers` single-threaded processes, or an existing Dask scheduler at `dask_address`. The token
store and the shards are the same bytes however they run.
"""

from __future__ import annotations

import logging
from typing import Literal

from prefect import flow

from bert_core import stage
from bert_core.config import SEED, PositiveInt, given
from bert_core.examples.generation import ExamplesConfig, examples_up_to_date
from bert_core.stage import balanced_batches, default_work_dir
from flows.cluster import dask_task_runner, data_cluster
from flows.parameters import ExamplesParameters
from tasks.examples import (finish_examples, finish_tokens, generate_units, plan_examples, plan_tokens, report_examples,
    tokenize_units)


@flow(name="run-data-units")
def units_flow(units: list[dict], kind: Literal["tokens", "examples"], num_batches: int = 8) -> list[dict]:
    """Every unit's statistics, in plan order; batches of units run in parallel on the flow's task runner."""
    run_batch, cost = (tokenize_units, "bytes") if kind == "tokens" else (generate_units, "tokens")
    positions = balanced_batches(list(range(len(units))), [u[cost] for u in units], num_batches)
    futures = run_batch.map([[units[i] for i in batch] for batch in positions])
    by_position = {i: stat for batch, future in zip(positions, futures) for i, stat in zip(batch, future.result())}
    return [by_position[i] for i in range(len(units))]


@flow(name="generate-examples")
def examples_flow(
    documents_dir: str,
    work_dir: str | None = None,
    examples: ExamplesParameters | None = None,
    seed: int = SEED,
    n_workers: PositiveInt = 1,
    dask_address: str | None = None,
) -> str:
    """Train a WordPiece tokenizer (or reuse one) and write pretraining examples into shards; returns the directory.

    Args:
        documents_dir: An ingest output directory.
        work_dir: Outputs go to `<work_dir>/examples` (and the token store to `<work_dir>/tokens`); empty:
            `$BERTFLOW_HOME/work`.
        examples: The fields of `ExamplesConfig` this run changes, e.g. {"max_seq_length": 128, "pair_objective":
            "sop", "masking": "dynamic", "tokenizer": {"vocab_size": 30522}, "mlm": {"mlm_probability": 0.15}}.
            `tokenizer.tokenizer_path` may name a registered encoder's tokenizer, `models:/<name>@champion`: while
            that alias is unset (a first run), a tokenizer is trained. Reusing the champion's keeps every encoder on
            one vocabulary, so their held-out MLM losses compare and the suite's random-init twin is reused.
        seed: Random seed of the pairs and the masks.
        n_workers: Above 1, a local Dask cluster of that many single-threaded processes.
        dask_address: An existing Dask scheduler to run on instead (tcp://host:8786).
    """
    values = given(examples)
    tokenizer = values.get("tokenizer", {})
    if tokenizer.get("tokenizer_path"):
        values["tokenizer"] = {**tokenizer, "tokenizer_path": _local_tokenizer(tokenizer["tokenizer_path"])}
    config = stage.config_from_dict(ExamplesConfig, {**values, "seed": seed})
    output_dir = default_work_dir(work_dir) / "examples"
    if examples_up_to_date(config, documents_dir, output_dir):
        report_examples(output_dir)
        return str(output_dir)
    with data_cluster(n_workers, dask_address) as (address, threads):
        run_units = units_flow.with_options(task_runner=dask_task_runner(address)) if address else units_flow
        batches = 4 * threads
        tokens = plan_tokens(stage.to_jsonable(config.tokenizer), documents_dir, str(output_dir.with_name("tokens")))
        if not tokens["up_to_date"]:  # the corpus is tokenized on the workers too, then concatenated here
            finish_tokens(tokens, run_units(tokens["units"], "tokens", num_batches=batches))
        plan = plan_examples(stage.to_jsonable(config), documents_dir, str(output_dir))
        stats = run_units(plan["units"], "examples", num_batches=batches)
    return finish_examples(plan, stats)


def _local_tokenizer(tokenizer_path: str | None) -> str | None:
    """A registered model's tokenizer as its local directory; None (train one) for an alias not set yet."""
    if not tokenizer_path or not tokenizer_path.startswith("models:/"):
        return tokenizer_path
    from bert_core.registry.registration import alias_version
    from bert_core.training.model import resolve_model

    if "@" in tokenizer_path and alias_version(tokenizer_path) is None:
        logging.getLogger(__name__).info("tokenizer_path %s: no such alias yet; training a tokenizer", tokenizer_path)
        return None
    return resolve_model(tokenizer_path)
