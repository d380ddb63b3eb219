"""The Dask cluster a data stage's units run on: one started elsewhere, a local one, or none."""

import contextlib
import os
from collections.abc import Iterator

from bert_core import stage


def _prefect_api_url() -> str:
    """This run's Prefect API (a temporary server's when none is configured): the one its Dask workers report to."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def _report_to(api_url: str) -> None:
    """Run on every worker of a cluster started elsewhere: its Prefect tasks report to this run's API. Without it a
    worker started with no PREFECT_API_URL starts a temporary server of its own, and the run never sees its tasks."""
    os.environ["PREFECT_API_URL"] = api_url


@contextlib.contextmanager
def data_cluster(n_workers: int, dask_address: str | None) -> Iterator[tuple[str | None, int]]:
    """(scheduler address, worker threads) that a data stage's units run on, for the length of the block.

    `dask_address`: a cluster started elsewhere (`dask scheduler` + `dask worker --nthreads 1 ...`), whose workers
    are pointed at this run's Prefect API. Else, for `n_workers > 1`, one `stage.local_data_cluster` of that many
    single-threaded processes, shared by every stage inside the block (the pipeline's ingest and examples start it
    once). Else (None, 1): the flow's own thread runner. A stage cuts its units into about four batches per worker
    thread.
    """
    if dask_address:
        from distributed import Client

        with Client(dask_address, timeout=30) as client:
            client.run(_report_to, _prefect_api_url())
            threads = sum(client.nthreads().values())
        yield dask_address, max(1, threads)
    elif n_workers > 1:
        with stage.local_data_cluster(n_workers, env={"PREFECT_API_URL": _prefect_api_url()}) as cluster:
            yield cluster.scheduler_address, n_workers
    else:
        yield None, 1


def dask_task_runner(address: str):
    """A DaskTaskRunner on the scheduler at `address` (see `data_cluster`)."""
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)
