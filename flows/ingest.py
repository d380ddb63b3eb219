"""Flow: ingest a corpus into cleaned, deduplicated, sentence-split documents.

Input files are processed in parallel (`process_input` mapped over them), on threads by default, or on a Dask
cluster through prefect-dask: `n_workers > 1` starts a local cluster of that many processes, `dask_address`
joins an existing scheduler (e.g. "tcp://scheduler:8786"). The corpus-wide merge then runs in this process.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, unmapped

from bert_core import stage
from bert_core.cleaning import CleaningConfig
from bert_core.corpus import SAMPLE_SOURCES, ReadConfig, input_units
from bert_core.textfiles import local_unit
from bert_core.dedup import DedupConfig
from bert_core.ingest import IngestConfig, ingest_key, part_key, parts_dir_for
from flows import balanced_batches, dask_task_runner, default_work_dir
from tasks.ingest import merge_parts, process_inputs, report_ingest


def batch_units(units: list[str], num_batches: int) -> list[list[str]]:
    """Input files in about `num_batches` batches of similar size in bytes."""
    paths = [Path(local_unit(u)) for u in units]
    return balanced_batches(units, [p.stat().st_size if p.is_file() else 1 for p in paths], num_batches)


@flow(name="ingest-inputs")
def process_inputs_flow(units: list[str], config: dict, parts_dir: str, num_batches: int = 8) -> list[dict]:
    """Clean every input unit into a part file, batches in parallel on the flow's task runner; records in order."""
    batches = batch_units(units, num_batches)
    futures = process_inputs.map(batches, config=unmapped(config), parts_dir=unmapped(parts_dir))
    by_unit = {r["unit"]: r for future in futures for r in future.result()}
    return [by_unit[u] for u in units]


@flow(name="ingest")
def ingest_flow(
    sources: list[str] | None = None,
    work_dir: str | None = None,
    text_column: str = ReadConfig.text_column,
    text_document_boundary: str = ReadConfig.text_document_boundary,
    sentence_splitter: str = CleaningConfig.sentence_splitter,
    min_chars: int = CleaningConfig.min_chars,
    near_dedup_threshold: float = DedupConfig.near_dedup_threshold,
    decontamination_files: list[str] | None = None,
    validation_fraction: float = IngestConfig.validation_fraction,
    seed: int = IngestConfig.seed,
    n_workers: int = 1,
    dask_address: str | None = None,
) -> str:
    """Read `sources` (files, directories, globs, `hf:NAME:CONFIG:SPLIT`; default: the bundled sample)."""
    config = IngestConfig(
        sources=tuple(sources) if sources else SAMPLE_SOURCES,
        read=ReadConfig(text_column=text_column, text_document_boundary=text_document_boundary),
        cleaning=CleaningConfig(sentence_splitter=sentence_splitter, min_chars=min_chars),
        dedup=DedupConfig(near_dedup_threshold=near_dedup_threshold),
        decontamination_files=tuple(decontamination_files or ()),
        validation_fraction=validation_fraction,
        seed=seed,
    )
    output_dir = default_work_dir(work_dir) / "ingest"
    units = input_units(config.sources)
    key = ingest_key(config, [part_key(u, config) for u in units])
    if stage.completed_stage(output_dir, key):
        report_ingest(output_dir)
        return str(output_dir)
    parts_dir = str(parts_dir_for(output_dir))
    config_dict = stage.to_jsonable(config)
    inputs_flow = process_inputs_flow
    if n_workers > 1 or dask_address:
        inputs_flow = process_inputs_flow.with_options(task_runner=dask_task_runner(n_workers, dask_address))
    records = inputs_flow(units, config_dict, parts_dir, num_batches=4 * max(1, n_workers))
    return merge_parts(records, config_dict, parts_dir, str(output_dir), key)


if __name__ == "__main__":
    print(ingest_flow())
