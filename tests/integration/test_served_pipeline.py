"""The deployment path as operators use it, on real servers: Prefect and MLflow servers on 127.0.0.1 (SQLite),
work pools and limits, `prefect deploy`, a process worker running the pipeline deployment on the tiny sample,
then the flow run's state through Prefect's REST API and the champion through MLflow's, and both UIs in headless
Chromium with screenshots. Everything it starts, it stops.

Screenshots go to `$BERTFLOW_TEST_ARTIFACTS` (default `<repo>/test-artifacts/`). Chromium is Debian's package
(`.ci/run` installs it); where it is absent the browser test is skipped unless `BERTFLOW_REQUIRE_BROWSER=1`, which
CI sets so that there it must run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from deployments import servers
from tests.conftest import REPO

PARAMS = {"examples": {"vocab_size": 2000, "max_seq_length": 64},
          "pretrain": {"max_train_steps": 30, "num_warmup_steps": 3, "eval_steps": 15, "checkpointing_steps": 15,
                       "per_device_train_batch_size": 16},
          "finetune": {"max_train_steps": 40, "max_seq_length": 64}, "registered_model_prefix": "itest"}
ARTIFACTS = Path(os.environ.get("BERTFLOW_TEST_ARTIFACTS", REPO / "test-artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    """JSON from a GET, or from a POST of `body`, to one of the loopback servers this test started."""
    request = urllib.request.Request(url, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


def _artifacts(settings, where: dict) -> list[dict]:
    return _get(f"{settings.prefect_api_url}/artifacts/filter", {"artifacts": where})


def _run(command: list[str], env: dict, timeout: float, cwd: Path = REPO) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(command)} -> {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("served")
    settings = servers.Settings(home=home, prefect_port=_free_port(), mlflow_port=_free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(settings.env(), PREFECT_HOME=str(home / "client"), PREFECT_LOGGING_LEVEL="INFO",
               OMP_NUM_THREADS="2")
    prefect = str(Path(sys.executable).parent / "prefect")
    worker = None
    try:
        servers.start(settings, timeout_seconds=180)
        servers.setup(settings)
        _run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env, 300)
        out = _run([prefect, "deployment", "run", "bert-pipeline/sample-smoke-test", "--params",
                    json.dumps({**PARAMS, "work_dir": str(home / "work")})], env, 120)
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out)[1]
        log = open(home / "worker.log", "w")  # noqa: SIM115
        worker = subprocess.Popen([prefect, "worker", "start", "--pool", servers.PROCESS_POOL, "--run-once"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        worker.wait(timeout=1500)
        yield {"settings": settings, "flow_run_id": flow_run_id, "home": home, "worker_log": home / "worker.log"}
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        stopped = servers.stop(settings)
        assert set(stopped.values()) <= {"stopped", "killed", "not running"}


def test_deployed_pipeline_completes_and_registers_a_champion(served):
    settings, flow_run_id = served["settings"], served["flow_run_id"]
    run = _get(f"{settings.prefect_api_url}/flow_runs/{flow_run_id}")
    assert run["state"]["type"] == "COMPLETED", served["worker_log"].read_text()[-5000:]
    deployment = _get(f"{settings.prefect_api_url}/deployments/{run['deployment_id']}")
    assert deployment["name"] == "sample-smoke-test" and run["parameters"]["registered_model_prefix"] == "itest"
    # The run's artifacts: the markdown summary (with links into MLflow) and the models table on the pipeline run,
    # the training progress on its pretrain subflow (the only pipeline this fresh server has seen).
    by_key = {a["key"]: a for a in _artifacts(settings, {"flow_run_id": {"any_": [flow_run_id]}})}
    assert {"pipeline-summary", "pipeline-models"} <= set(by_key), sorted(by_key)
    assert f"{settings.mlflow_url}/#/models/itest-sst2/versions/" in by_key["pipeline-summary"]["data"]
    assert any(row["model"] == "itest-sst2" for row in json.loads(by_key["pipeline-models"]["data"]))
    (progress,) = _artifacts(settings, {"key": {"any_": ["pretrain-progress"]}})
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0
    # Through the MLflow server's REST API: the task model is registered, carries the champion alias and the
    # lineage of this very flow run; the pretrained encoder too.
    query = urllib.parse.urlencode({"name": "itest-sst2", "alias": "champion"})
    version = _get(f"{settings.mlflow_url}/api/2.0/mlflow/registered-models/alias?{query}")["model_version"]
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert "champion" in version["aliases"] and tags["prefect.flow_run_id"] == flow_run_id
    assert tags["bertflow.parent_model"].startswith("models:/itest-bert-tiny/")
    assert "## Evaluation" in version["description"]
    query = urllib.parse.urlencode({"name": "itest-bert-tiny", "alias": "champion"})
    assert _get(f"{settings.mlflow_url}/api/2.0/mlflow/registered-models/alias?{query}")["model_version"]["version"]
    # The parent MLflow run of the pipeline, finished, with its stages nested under it.
    experiment_id = _get(f"{settings.mlflow_url}/api/2.0/mlflow/experiments/get-by-name?"
                         + urllib.parse.urlencode({"experiment_name": "bertflow"}))["experiment"]["experiment_id"]
    where = f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`bertflow.stage` = 'pipeline'"
    (parent,) = _get(f"{settings.mlflow_url}/api/2.0/mlflow/runs/search",
                     {"experiment_ids": [experiment_id], "filter": where})["runs"]
    assert parent["info"]["status"] == "FINISHED"
    # Both servers listen on the loopback interface only.
    import psutil

    for name in ("prefect", "mlflow"):
        leader = psutil.Process(int((settings.state / f"{name}.pid").read_text()))
        ports = [c.laddr for p in (leader, *leader.children(recursive=True))
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert ports and all(addr.ip == "127.0.0.1" for addr in ports), (name, ports)
    # Secrets never reach params or tags: the servers have none, and nothing that looks like one was logged.
    assert not re.search(r"://[^/\s]+:[^/\s]+@", json.dumps(parent))


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browse(url: str, profile: Path, *, screenshot: Path | None = None) -> str:
    """The rendered DOM of `url` (after its scripts ran), or a screenshot of it, from headless Chromium."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,1000",
             "--virtual-time-budget=20000", f"--user-data-dir={profile}"]
    action = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    result = subprocess.run([_chromium(), *flags, *action, url], capture_output=True, text=True, timeout=180,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_both_uis_show_the_run_and_the_champion(served):
    if _chromium() is None:
        if os.environ.get("BERTFLOW_REQUIRE_BROWSER") == "1":
            pytest.fail("BERTFLOW_REQUIRE_BROWSER=1 but no chromium: apt-get install chromium")
        pytest.skip("no chromium on this machine (apt-get install chromium); CI installs it and requires this test")
    settings, flow_run_id = served["settings"], served["flow_run_id"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    run_name = _get(f"{settings.prefect_api_url}/flow_runs/{flow_run_id}")["name"]
    ui = settings.prefect_api_url.removesuffix("/api")
    page = f"{ui}/runs/flow-run/{flow_run_id}"
    profile = served["home"] / "chromium-profile"  # a new, empty one: no state from any other browser use
    dom = _browse(page, profile)
    assert run_name in dom and "Completed" in dom, dom[-3000:]
    shot = ARTIFACTS / "prefect-flow-run.png"
    _browse(page, profile, screenshot=shot)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one

    query = urllib.parse.urlencode({"name": "itest-sst2", "alias": "champion"})
    champion = _get(f"{settings.mlflow_url}/api/2.0/mlflow/registered-models/alias?{query}")["model_version"]
    page = f"{settings.mlflow_url}/#/models/itest-sst2"
    dom = _browse(page, profile)
    assert "itest-sst2" in dom and f"Version {champion['version']}" in dom and "champion" in dom, dom[-3000:]
    shot = ARTIFACTS / "mlflow-registered-model.png"
    _browse(page, profile, screenshot=shot)
    assert shot.stat().st_size > 20_000
