"""Flow: ingest a corpus into cleaned, deduplicated, sentence-split documents.

Input files are processed in parallel (`process_input` mapped over them), on threads by default, or on a Dask
cluster through prefect-dask: `n_workers > 1` starts a local cluster of that many processes, `dask_address`
joins an existing scheduler (e.g. "tcp://scheduler:8786"). The corpus-wide merge then runs in this process.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, unmapped

from bert_core import stage
from bert_core.config import SEED, PositiveInt, given
from bert_core.ingest.corpus import IngestConfig
from bert_core.ingest.sources import SAMPLE_SOURCES
from bert_core.ingest.textfiles import local_unit
from bert_core.stage import balanced_batches, default_work_dir
from flows.cluster import dask_task_runner, data_cluster
from flows.parameters import IngestParameters
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
    ingest: IngestParameters | None = None,
    seed: int = SEED,
    n_workers: PositiveInt = 1,
    dask_address: str | None = None,
) -> str:
    """Read, clean, filter, deduplicate and sentence-split `sources` into Parquet documents; returns the directory.

    Args:
        sources: Files, directories, globs or `hf:NAME:CONFIG:SPLIT` datasets; empty: the bundled sample.
        work_dir: Outputs go to `<work_dir>/ingest`; empty: `$BERTFLOW_HOME/work`.
        ingest: The fields of `IngestConfig` this run changes, e.g. {"validation_fraction": 0.1, "cleaning":
            {"min_chars": 100}, "decontamination_files": ["dev.tsv::sentence"]}; the rest are the config's defaults.
        seed: Random seed of the validation split.
        n_workers: Above 1, a local Dask cluster of that many single-threaded processes.
        dask_address: An existing Dask scheduler to run on instead (tcp://host:8786).
    """
    config = stage.config_from_dict(IngestConfig, {**given(ingest), "sources": sources or SAMPLE_SOURCES, "seed": seed})
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
