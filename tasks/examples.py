"""Prefect task for the tokenizer + example generation stage."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bert_core import examples, shards


@task(name="generate_examples", cache_policy=NO_CACHE)
def generate_examples(config: examples.ExamplesConfig, documents_dir: str, output_dir: str) -> str:
    logger = get_run_logger()
    path = examples.generate_examples(config, documents_dir, output_dir)
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
    create_table_artifact(key="example-shards", table=rows, description="NSP/MLM example shards and quality figures")
    return str(path)
