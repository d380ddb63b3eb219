"""The deployment path as operators use it, on real servers: Prefect and MLflow servers on 127.0.0.1 (SQLite),
work pools and limits, `prefect deploy`, a process worker running the pipeline deployment on the tiny sample,
then the flow run's state through Prefect's REST API and the champion through MLflow's, and both UIs in headless
Chromium with screenshots. Everything it starts, it stops.

Screenshots go to `$BERTFLOW_TEST_ARTIFACTS` (default `<repo>/test-artifacts/`). Chromium is Debian's package
(`.ci/run` installs it); where it is absent the browser test is skipped unless `BERTFLOW_REQUIRE_BROWSER=1`, which
CI sets so that there it must run.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from deployments import servers
from tests.conftest import REPO

PARAMS = {"examples": {"tokenizer": {"vocab_size": 2000}, "max_seq_length": 64},
          "pretrain": {"max_train_steps": 30, "num_warmup_steps": 3, "eval_steps": 15, "checkpointing_steps": 15,
                       "per_device_train_batch_size": 16},
          "finetune": {"max_train_steps": 40, "max_seq_length": 64}, "registered_model_prefix": "itest"}
ARTIFACTS = Path(os.environ.get("BERTFLOW_TEST_ARTIFACTS", REPO / "test-artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None, method: str | None = None):
    """JSON from a GET, or from a POST (or `method`) of `body`, to one of the loopback servers this test started."""
    request = urllib.request.Request(url, method=method or ("POST" if body is not None else "GET"),
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        content = response.read()
        return json.loads(content) if content else None


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
        yield {"settings": settings, "flow_run_id": flow_run_id, "home": home, "worker_log": home / "worker.log",
               "env": env}
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

    # The deployment's run form: each stage object's fields, generated from its config dataclass, with the
    # dataclass's comment as the description, choices as options and the deployment's own values.
    deployment = _get(f"{settings.prefect_api_url}/deployments/name/bert-pipeline/sample-smoke-test")
    form_page = f"{ui}/deployments/deployment/{deployment['id']}/run"
    form = _browse(form_page, profile)
    for shown in ("Max Train Steps", "examples per device per optimizer micro-step", 'value="bert-mini"',
                  'value="bf16"', 'value="tiny"'):
        assert shown in form, (shown, form[-3000:])
    # What the form validates a run against before it starts: the bounds, and no unknown names.
    pretrain = deployment["parameter_openapi_schema"]["definitions"]["PretrainParameters"]
    assert pretrain["additionalProperties"] is False
    assert pretrain["properties"]["max_train_steps"]["exclusiveMinimum"] == 0
    shot = ARTIFACTS / "prefect-run-form.png"
    _browse(form_page, profile, screenshot=shot)
    assert shot.stat().st_size > 20_000

    query = urllib.parse.urlencode({"name": "itest-sst2", "alias": "champion"})
    champion = _get(f"{settings.mlflow_url}/api/2.0/mlflow/registered-models/alias?{query}")["model_version"]
    page = f"{settings.mlflow_url}/#/models/itest-sst2"
    dom = _browse(page, profile)
    assert "itest-sst2" in dom and f"Version {champion['version']}" in dom and "champion" in dom, dom[-3000:]
    shot = ARTIFACTS / "mlflow-registered-model.png"
    _browse(page, profile, screenshot=shot)
    assert shot.stat().st_size > 20_000


def _next_fire(cron: str, after: datetime.datetime) -> datetime.datetime:
    """The first time after `after` that a "M H * * D" cron (D a weekday, 0 Sunday, or *) fires, in UTC."""
    minute, hour, day, month, weekday = cron.split()
    assert day == month == "*", cron
    t = after.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    while not (t.minute == int(minute) and t.hour == int(hour) and weekday in ("*", str(t.isoweekday() % 7))):
        t += datetime.timedelta(minutes=1)
    return t


def _scheduled_runs(settings, deployment_id: str) -> list[dict]:
    return _get(f"{settings.prefect_api_url}/flow_runs/filter",
                {"flow_runs": {"deployment_id": {"any_": [deployment_id]}, "state": {"type": {"any_": ["SCHEDULED"]}}},
                 "sort": "EXPECTED_START_TIME_ASC"})


def _check_runs(runs: list[dict], cron: str) -> None:
    """Auto-scheduled runs at the cron's successive times, the first one the cron's next time after it was made."""
    def at(value: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))

    expected = _next_fire(cron, at(runs[0]["created"]))
    for run in runs[:3]:
        assert run["auto_scheduled"] and at(run["expected_start_time"]) == expected, (cron, run["expected_start_time"])
        expected = _next_fire(cron, expected)


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s"
        time.sleep(2)
    return value


def test_cron_schedules_fire_and_pause_through_the_api(served):
    """The server's scheduler creates Scheduled runs for every deployment whose cron schedule is active, at the
    cron's next times (a regression caught here once: with SQLAlchemy 2.1 cron schedules never fired), none for an
    inactive one; pausing a schedule removes its future runs and resuming brings them back."""
    settings = served["settings"]
    deployments = _get(f"{settings.prefect_api_url}/deployments/filter", {})
    crons = {d["name"]: (d, sch) for d in deployments for sch in d["schedules"] if sch["schedule"].get("cron")}
    active = {name for name, (_, sch) in crons.items() if sch["active"]}
    assert {"weekly-retraining", "nightly-continued-pretraining"} <= active, sorted(crons)
    assert "weekly-retraining-gpu" in set(crons) - active  # off until a GPU pool exists
    for name, (deployment, schedule) in crons.items():
        if name not in active:
            assert _scheduled_runs(settings, deployment["id"]) == [], name
            continue
        assert schedule["schedule"]["timezone"] == "UTC"
        _check_runs(_wait_for(lambda: _scheduled_runs(settings, deployment["id"]), 150, f"scheduled runs of {name}"),
                    schedule["schedule"]["cron"])

    deployment, schedule = crons["nightly-continued-pretraining"]
    url = f"{settings.prefect_api_url}/deployments/{deployment['id']}/schedules/{schedule['id']}"
    _get(url, {"active": False}, method="PATCH")
    assert _scheduled_runs(settings, deployment["id"]) == []  # the paused schedule's future runs are gone
    time.sleep(12)  # two passes of the scheduler's loop over recently changed deployments: it stays paused
    assert _scheduled_runs(settings, deployment["id"]) == []
    _get(url, {"active": True}, method="PATCH")
    _check_runs(_wait_for(lambda: _scheduled_runs(settings, deployment["id"]), 150, "runs after resuming"),
                schedule["schedule"]["cron"])


def _register_task_champions(settings, monkeypatch, work: Path) -> None:
    """Pair, NER and QA champions on the MLflow server: tiny fine-tunes of the run's registered encoder."""
    from bert_core.downstream.catalogue import get_task
    from bert_core.downstream.classification import FinetuneConfig, finetune
    from bert_core.downstream.ner import NerConfig, finetune_ner
    from bert_core.downstream.qa import QaConfig, finetune_qa
    from bert_core.ingest.sources import SAMPLE_DIR
    from bert_core.registry.registration import RegisterConfig, register_model
    from bert_core.training.model import resolve_model
    from tests.downstream.test_ner import SENTENCES, write_conll

    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_url)
    monkeypatch.setenv("BERTFLOW_HOME", str(work))
    encoder = resolve_model("models:/itest-bert-tiny@champion")
    mrpc = {k: v for k, v in get_task("mrpc").config_fields().items() if k != "metric_for_best_model"}
    pairs = finetune(FinetuneConfig(model_name_or_path=encoder, train_file=str(SAMPLE_DIR / "mrpc" / "train.tsv"),
                                    validation_file=str(SAMPLE_DIR / "mrpc" / "dev.tsv"), max_seq_length=64,
                                    max_train_steps=5, output_dir=str(work / "mrpc"), mixed_precision="no", **mrpc))
    conll = write_conll(work / "conll.txt", SENTENCES)
    ner = finetune_ner(NerConfig(model_name_or_path=encoder, train_file=str(conll), validation_file=str(conll),
                                 output_dir=str(work / "ner"), max_seq_length=32, max_train_steps=5,
                                 mixed_precision="no"))
    qa = finetune_qa(QaConfig(model_name_or_path=encoder, train_file=str(SAMPLE_DIR / "squad" / "train.json.gz"),
                              validation_file=str(SAMPLE_DIR / "squad" / "dev.json.gz"), output_dir=str(work / "qa"),
                              max_seq_length=128, doc_stride=48, max_train_steps=3, mixed_precision="no"))
    for name, summary, kind, metric in (("itest-mrpc", pairs, "classifier", "eval_accuracy"),
                                        ("itest-ner", ner, "token-classifier", "eval_f1"),
                                        ("itest-qa", qa, "question-answering", "eval_f1")):
        info = register_model(RegisterConfig(model_dir=summary["final_dir"], registered_model_name=name, kind=kind,
                                             primary_metric=metric, metrics={metric: summary[metric]}))
        assert info["promoted"], info


# The documented JSON shapes (README "Serving"): texts as "inputs", columns as "dataframe_records".
REQUESTS = {
    "itest-sst2": {"inputs": ["a gorgeous, witty film", "a dull mess"]},
    "itest-mrpc": {"dataframe_records": [{"text": "Profits rose 5%.", "text_pair": "Profit went up 5%."}]},
    "itest-ner": {"inputs": ["Alice Smith works for Acme Corp in Paris ."]},
    "itest-qa": {"dataframe_records": [{"question": "Who ruled Normandy?",
                                        "context": "Normandy was ruled by Rollo, a Viking leader."}]},
    "itest-bert-tiny": {"dataframe_records": [{"text": "the [MASK] of the river"}]},
}


def test_every_kind_of_champion_is_served_over_rest(served, monkeypatch, tmp_path):
    """`mlflow models serve -m models:/<name>@champion --env-manager local` for the champion of each model kind,
    on 127.0.0.1, and a real HTTP client gets labels, tags, answers, fill-mask tokens and vectors back."""
    settings = served["settings"]
    _register_task_champions(settings, monkeypatch, tmp_path)
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    env = {**served["env"], "MLFLOW_TRACKING_URI": settings.mlflow_url, "OMP_NUM_THREADS": "1"}
    ports = {name: _free_port() for name in REQUESTS}
    servers_started = {name: subprocess.Popen(
        [mlflow_cli, "models", "serve", "-m", f"models:/{name}@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=open(tmp_path / f"{name}.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True) for name, port in ports.items()}
    try:
        for name, port in ports.items():
            def ready(name=name, port=port):
                assert servers_started[name].poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
                try:
                    return urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5).status == 200  # noqa: S310
                except OSError:
                    return False
            _wait_for(ready, 240, f"{name} server")
        out = {name: _get(f"http://127.0.0.1:{ports[name]}/invocations", body)["predictions"]
               for name, body in REQUESTS.items()}
        embed = _get(f"http://127.0.0.1:{ports['itest-bert-tiny']}/invocations",
                     {**REQUESTS["itest-bert-tiny"], "params": {"task": "embed"}})["predictions"]
    finally:
        for process in servers_started.values():
            os.killpg(process.pid, 15)
        for process in servers_started.values():
            process.wait(timeout=60)
    assert [set(r) for r in out["itest-sst2"]] == [{"label", "label_id", "score"}] * 2
    assert {r["label"] for r in out["itest-sst2"]} <= {"negative", "positive"}
    assert out["itest-mrpc"][0]["label"] in ("not_paraphrase", "paraphrase")
    (tagged,) = out["itest-ner"]
    assert len(tagged["words"]) == len(tagged["tags"]) == 9 and isinstance(tagged["entities"], list), tagged
    (answer,) = out["itest-qa"]
    context = REQUESTS["itest-qa"]["dataframe_records"][0]["context"]
    assert context[answer["start"]:answer["start"] + len(answer["answer"])] == answer["answer"], answer
    (masked,) = out["itest-bert-tiny"]
    assert len(masked["tokens"]) == 5 and len(masked["scores"]) == 5 and masked["scores"][0] >= masked["scores"][-1]
    (vector,) = embed
    assert len(vector["vector"]) == 128 and vector["tokens"][0] == "[CLS]", vector
    import psutil

    assert all(not psutil.pid_exists(p.pid) or psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE
               for p in servers_started.values())
