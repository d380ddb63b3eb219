"""Flow: ingest a corpus into cleaned, deduplicated, sentence-split documents.

Input files are processed in parallel (`process_input` mapped over them), on threads by default, or on a Dask
cluster through prefect-dask: `n_workers > 1` starts a local cluster of that many processes, `dask_address`
joins an existing scheduler (e.g. "tcp://scheduler:8786"). The corpus-wide merge then runs in this process.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, unmapped

from bert_core import stage
from bert_core.ingest.cleaning import CleaningConfig
from bert_core.ingest.corpus import IngestConfig
from bert_core.ingest.dedup import DedupConfig
from bert_core.ingest.sources import SAMPLE_SOURCES, ReadConfig
from bert_core.ingest.textfiles import local_unit
from bert_core.stage import balanced_batches, default_work_dir
from flows.cluster import dask_task_runner, data_cluster
from flows.parameters import Fraction, NonNegativeInt, PositiveInt
from tasks.ingest import finish_ingest, plan_ingest, process_inputs, report_ingest


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
    min_chars: NonNegativeInt = CleaningConfig.min_chars,
    near_dedup_threshold: float = DedupConfig.near_dedup_threshold,
    decontamination_files: list[str] | None = None,
    validation_fraction: Fraction = IngestConfig.validation_fraction,
    seed: int = IngestConfig.seed,
    n_workers: PositiveInt = 1,
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
    plan = plan_ingest(stage.to_jsonable(config), str(default_work_dir(work_dir) / "ingest"))
    if plan["up_to_date"]:
        report_ingest(plan["output_dir"])
        return plan["output_dir"]
    with data_cluster(n_workers, dask_address) as (address, threads):
        inputs_flow = process_inputs_flow.with_options(task_runner=dask_task_runner(address)) if address else process_inputs_flow
        records = inputs_flow(plan["units"], plan["config"], plan["parts_dir"], num_batches=4 * threads)
        return finish_ingest(plan, records, dask_address=address)


if __name__ == "__main__":
    print(ingest_flow())
