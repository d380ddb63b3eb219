"""Prefect tasks for the tokenizer + example generation stage: plan, units (mapped, parallel), finish + report."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bert_core import stage
from bert_core.examples import generation, shards, token_store
from bert_core.examples.tokenizer import TokenizerConfig


@task(name="plan_tokens", cache_policy=NO_CACHE)
def plan_tokens(config: dict, documents_dir: str, output_dir: str) -> dict:
    """Train (or load) the tokenizer and cut the corpus into tokenizing units."""
    plan = token_store.plan_tokens(stage.config_from_dict(TokenizerConfig, config), documents_dir, output_dir)
    get_run_logger().info("tokens: %s", "up to date" if plan["up_to_date"] else f"{len(plan['units'])} units")
    return plan


@task(name="tokenize_units", cache_policy=NO_CACHE, retries=1)
def tokenize_units(specs: list[dict]) -> list[dict]:
    """`bert_core.examples.token_store.tokenize_unit` over a batch of units (a finished unit is not tokenized again)."""
    stats = [token_store.tokenize_unit(spec) for spec in specs]
    get_run_logger().info("%d unit(s): %d tokens", len(stats), sum(s["tokens"] for s in stats))
    return stats


@task(name="finish_tokens", cache_policy=NO_CACHE)
def finish_tokens(plan: dict, stats: list[dict]) -> str:
    return str(token_store.finish_tokens(plan, stats))


@task(name="plan_examples", cache_policy=NO_CACHE)
def plan_examples(config: dict, documents_dir: str, output_dir: str) -> dict:
    """Tokenize the corpus (once; reused by later phases) and cut each split into units of work."""
    plan = generation.plan_examples(stage.config_from_dict(generation.ExamplesConfig, config), documents_dir, output_dir)
    get_run_logger().info("examples: %s", "up to date" if plan["up_to_date"] else
                          f"{len(plan['units'])} units over {plan['splits']}")
    return plan


@task(name="generate_units", cache_policy=NO_CACHE, retries=1)
def generate_units(specs: list[dict]) -> list[dict]:
    """`bert_core.examples.generation.generate_unit` over a batch of units (a finished unit is not generated again)."""
    stats = [generation.generate_unit(spec) for spec in specs]
    get_run_logger().info("%d unit(s): %d examples", len(stats), sum(s["num_examples"] for s in stats))
    return stats


@task(name="finish_examples", cache_policy=NO_CACHE)
def finish_examples(plan: dict, stats: list[dict]) -> str:
    path = generation.finish_examples(plan, stats)
    report_examples(path)
    return str(path)


def report_examples(path: str | Path) -> None:
    """Table and markdown artifacts: counts and quality figures per split, the length histogram."""
    logger = get_run_logger()
    rows = []
    for split in ("train", "validation"):
        manifest = shards.read_manifest(Path(path) / split)
        quality = manifest["quality"]
        rows.append({"split": split, "examples": manifest["num_examples"], "tokens": manifest["num_tokens"],
                     "shards": manifest["num_shards"],
                     **{k: round(v, 4) for k, v in quality.items() if isinstance(v, (int, float))}})
        logger.info("%s: %d examples, %d tokens in %d shards; quality %s", split, manifest["num_examples"],
                    manifest["num_tokens"], manifest["num_shards"],
                    {k: v for k, v in quality.items() if k != "length_histogram"})
    histogram = shards.read_manifest(Path(path) / "train")["quality"]["length_histogram"]
    peak = max(c for _, c in histogram) or 1
    create_markdown_artifact(
        key="example-lengths",
        markdown="## Train example lengths (tokens)\n\n| tokens | examples | |\n|---|---:|---|\n"
                 + "".join(f"| {b} | {c} | {'█' * round(30 * c / peak)} |\n" for b, c in histogram),
        description="Length histogram of the training examples",
    )
    create_table_artifact(key="example-shards", table=rows, description="Pretraining example shards and quality figures")
