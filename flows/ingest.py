"""Flow: ingest a corpus into cleaned, sentence-split documents."""

from __future__ import annotations

from prefect import flow

from bert_core.corpus import SAMPLE_SOURCES, IngestConfig
from flows import default_work_dir
from tasks.corpus import ingest_corpus


@flow(name="ingest")
def ingest_flow(
    sources: list[str] | None = None,
    work_dir: str | None = None,
    text_column: str = IngestConfig.text_column,
    text_document_boundary: str = IngestConfig.text_document_boundary,
    validation_fraction: float = IngestConfig.validation_fraction,
) -> str:
    """Read `sources` (files, directories, globs, `hf:NAME:CONFIG:SPLIT`; default: the bundled sample)."""
    config = IngestConfig(
        sources=tuple(sources) if sources else SAMPLE_SOURCES,
        text_column=text_column,
        text_document_boundary=text_document_boundary,
        validation_fraction=validation_fraction,
    )
    return ingest_corpus(config, str(default_work_dir(work_dir) / "ingest"))


if __name__ == "__main__":
    print(ingest_flow())
