"""The pipeline's data stages on a Dask cluster started outside the flow, as an operator runs `dask scheduler` and
`dask worker` on other machines: the flows get only its address (`dask_address`).

The flows run in a child process with no Prefect API configured, as `python -m flows.pipeline` runs: Prefect starts
a temporary server for the run, which workers started elsewhere know nothing of (under the test harness the API
address travels in the task's settings and this case cannot show).
"""

import json
import os
import subprocess
import sys
from dataclasses import replace

from distributed import Client, LocalCluster

from bert_core import stage
from bert_core.examples import token_store
from bert_core.examples.generation import generate_examples
from bert_core.ingest.corpus import IngestConfig, ingest_corpus
from flows.cluster import data_cluster
from tests.conftest import TINY_EXAMPLES
from tests.flows.test_examples_flow import _checksums
from tests.flows.test_ingest_flow import _rows

RUN = r"""
import json, sys
from bert_core.examples import token_store
token_store._UNIT_BYTES = 20_000  # the sample in several tokenizing units
from prefect.client.orchestration import get_client
from flows.examples import examples_flow
from flows.ingest import ingest_flow
from prefect import flow

@flow
def data_stages(address, work):  # one run, so that its temporary server outlives both stages and the count below
    documents = ingest_flow(work_dir=work, ingest={"validation_fraction": 0.1}, dask_address=address)
    out = examples_flow(documents_dir=documents, work_dir=work, dask_address=address, examples={
        "tokenizer": {"vocab_size": 2000}, "max_seq_length": 64, "examples_per_shard": 1000, "unit_tokens": 50_000})
    with get_client(sync_client=True) as client:
        done = [r.name.rsplit("-", 1)[0] for r in client.read_task_runs() if r.state and r.state.is_completed()]
    return {"out": out, "completed": {n: done.count(n) for n in set(done)}}

print(json.dumps(data_stages(sys.argv[1], sys.argv[2])))
"""


def test_ingest_and_examples_on_a_cluster_started_outside_the_flow(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"RAYON_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
        assert set(client.run(lambda: os.environ.get("PREFECT_API_URL")).values()) == {None}
        child = subprocess.run([sys.executable, "-c", RUN, cluster.scheduler_address, str(tmp_path / "dask")],
                               capture_output=True, text=True, timeout=600,
                               env={**env, "PREFECT_HOME": str(tmp_path / "prefect-home"),
                                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                                    # a new database's migrations can outlast the default 20 s on a busy CI machine
                                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"})
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    # The workers' tasks reached the run's own API (not a temporary server of their own, which times out).
    assert all(result["completed"].get(name, 0) >= 1 for name in ("process_inputs", "tokenize_units",
                                                                   "generate_units")), result

    monkeypatch.setattr(token_store, "_UNIT_BYTES", 20_000)  # the same units, in this one process
    serial_documents = ingest_corpus(IngestConfig(validation_fraction=0.1), tmp_path / "serial" / "ingest")
    reference = generate_examples(replace(TINY_EXAMPLES, unit_tokens=50_000), serial_documents,
                                  tmp_path / "serial" / "examples")
    assert _rows(tmp_path / "dask" / "ingest") == _rows(serial_documents)
    assert stage.read_json(tmp_path / "dask" / "tokens" / "manifest.json")["units"] >= 4
    for split in ("train", "validation"):  # the token store, tokenized on the workers, is the same bytes
        assert (stage.hash_file(tmp_path / "dask" / "tokens" / f"tokens-{split}.arrow")
                == stage.hash_file(tmp_path / "serial" / "tokens" / f"tokens-{split}.arrow"))
    assert _checksums(tmp_path / "dask" / "examples") == _checksums(reference)
    assert result["out"] == str(tmp_path / "dask" / "examples")



def test_the_pipelines_own_cluster_has_single_threaded_workers_without_dask_s_profiler():
    # data_workers > 1: the cluster the flows start for themselves (one home: stage.local_data_cluster), whose
    # profiler and 20 ms ticks would take CPU from the one-core workers' tasks. Only library functions are run on
    # the workers: one of this module would import tests.conftest there, which clears PREFECT_API_URL.
    import dask

    with data_cluster(2, None) as (address, threads), Client(address) as client:
        assert threads == 2 and sorted(client.nthreads().values()) == [1, 1]
        env = {name: set(client.run(os.getenv, name).values()) for name in [*stage.SINGLE_THREADED, "PREFECT_API_URL"]}
        config = {key: set(client.run(dask.config.get, key).values()) for key in stage.DATA_WORKER_DASK_CONFIG}
    assert {k: v for k, v in env.items() if k in stage.SINGLE_THREADED} == {
        k: {v} for k, v in stage.SINGLE_THREADED.items()}
    [api] = env["PREFECT_API_URL"]
    assert api and api.startswith("http"), env  # the workers report to this run's Prefect API
    assert config == {k: {v} for k, v in stage.DATA_WORKER_DASK_CONFIG.items()}
