"""Prefect task for the ingest stage."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from bert_core import corpus, stage


@task(name="ingest_corpus", cache_policy=NO_CACHE)
def ingest_corpus(config: corpus.IngestConfig, output_dir: str) -> str:
    logger = get_run_logger()
    path = corpus.ingest_corpus(config, output_dir)
    manifest = stage.read_json(Path(path) / "manifest.json")
    rows = [{"what": "documents read", "count": manifest["documents_read"]},
            {"what": "documents kept", "count": manifest["documents_kept"]},
            *({"what": f"rejected: {reason}", "count": n} for reason, n in sorted(manifest["documents_rejected"].items())),
            *({"what": f"kept in {split}", "count": n} for split, n in manifest["documents_per_split"].items()),
            {"what": "sentences", "count": manifest["sentences"]},
            {"what": "characters", "count": manifest["characters"]}]
    create_table_artifact(key="ingest-counts", table=rows, description="Ingest: documents read, kept and rejected")
    logger.info("ingest: %d read, %d kept, rejected %s", manifest["documents_read"], manifest["documents_kept"],
                manifest["documents_rejected"])
    return str(path)
