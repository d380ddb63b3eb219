"""Prefect tasks for the ingest stage: `plan_ingest`, one `process_input` per input file (mapped, parallel), then
`finish_ingest`."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from bert_core import stage
from bert_core.ingest import corpus


@task(name="process_inputs", cache_policy=NO_CACHE, retries=1)
def process_inputs(units: list[str], config: dict, parts_dir: str) -> list[dict]:
    """`bert_core.ingest.corpus.process_input` over a batch of input units (one part file each)."""
    ingest_config = stage.config_from_dict(corpus.IngestConfig, config)
    records = [corpus.process_input(unit, ingest_config, parts_dir) for unit in units]
    get_run_logger().info("%d input(s): %d read, %d cleaned", len(records), sum(r["read"] for r in records),
                          sum(r["cleaned"] for r in records))
    return records


@task(name="plan_ingest", cache_policy=NO_CACHE)
def plan_ingest(config: dict, output_dir: str) -> dict:
    """`bert_core.ingest.corpus.plan_ingest`: the units to process, or `up_to_date`."""
    return corpus.plan_ingest(stage.config_from_dict(corpus.IngestConfig, config), output_dir)


@task(name="finish_ingest", cache_policy=NO_CACHE)
def finish_ingest(plan: dict, records: list[dict], dask_address: str | None = None) -> str:
    """`bert_core.ingest.corpus.finish_ingest`: the corpus-wide merge, dedup and split of the units' parts; the near
    dedup's units (per part, then per band) on the Dask cluster at `dask_address` when given."""
    if dask_address:
        from distributed import Client

        with Client(dask_address, timeout=30) as client:
            path = corpus.finish_ingest(plan, records, executor=client.get_executor())
    else:
        path = corpus.finish_ingest(plan, records)
    report_ingest(path)
    return str(path)


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def report_ingest(output_dir: str | Path) -> None:
    """Table and markdown artifacts of an ingest output: counts, rejection reasons, document-length histogram."""
    manifest = stage.read_json(Path(output_dir) / "manifest.json")
    rows = [{"what": "documents read", "count": manifest["documents_read"]},
            {"what": "documents kept", "count": manifest["documents_kept"]},
            *({"what": f"rejected: {reason}", "count": n} for reason, n in manifest["documents_rejected"].items()),
            *({"what": f"kept in {split}", "count": n} for split, n in manifest["documents_per_split"].items()),
            {"what": "sentences", "count": manifest["sentences"]},
            {"what": "characters", "count": manifest["characters"]}]
    create_table_artifact(key="ingest-counts", table=rows, description="Ingest: documents read, kept and rejected")
    histogram = manifest["document_characters_histogram"]
    peak = max((c for _, c in histogram), default=1) or 1
    sources = "".join(f"| `{s}` | {c.get('read', 0)} | {c.get('kept', 0)} | "
                      + ", ".join(f"{k.removeprefix('rejected_')} {v}" for k, v in sorted(c.items())
                                  if k.startswith("rejected_")) + " |\n"
                      for s, c in manifest["per_source"].items())
    problems = manifest.get("problem_files", [])
    problem_rows = "".join(f"| `{p['path']}` | {p['problem']} | {p['count']} | {_cell(p['example'])} |\n"
                           for p in problems[:50])
    problem_table = (f"\n### Problem files ({len(problems)})\n\n| file | problem | records | example |\n"
                     f"|---|---|---:|---|\n{problem_rows}" + ("| ... | | | |\n" if len(problems) > 50 else "")
                     if problems else "")
    encodings = ", ".join(f"{k} {v:,}" for k, v in manifest.get("documents_per_encoding", {}).items())
    create_markdown_artifact(
        key="ingest-report",
        markdown=(f"## Ingest\n\n{manifest['documents_read']:,} documents read, {manifest['documents_kept']:,} kept, "
                  f"{manifest['sentences']:,} sentences, {manifest['characters']:,} characters; decoded as "
                  f"{encodings or '-'}; {manifest.get('long_words_removed', 0):,} over-long words and "
                  f"{manifest.get('template_lines_removed', 0):,} lines of template residue removed.\n\n"
                  "| source | read | kept | rejected |\n|---|---:|---:|---|\n" + sources + problem_table
                  + "\n### Document length (characters)\n\n| bucket | documents | |\n|---|---:|---|\n"
                  + "".join(f"| {b} | {c} | {'█' * round(30 * c / peak)} |\n" for b, c in histogram)),
        description="Ingest report",
    )
    get_run_logger().info("ingest: %d read, %d kept, rejected %s", manifest["documents_read"],
                          manifest["documents_kept"], manifest["documents_rejected"])
