"""Every deployment in deployments/prefect.yaml loads, validates its parameters and schedules, with no server."""

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

from deployments import PREFECT_YAML
from tests.conftest import REPO

SPEC = yaml.safe_load(PREFECT_YAML.read_text())
DEPLOYMENTS = SPEC["deployments"]


def test_there_is_a_weekly_retraining_deployment():
    weekly = next(d for d in DEPLOYMENTS if d["name"] == "weekly-retraining")
    assert weekly["entrypoint"] == "flows/pipeline.py:bert_pipeline"
    (schedule,) = weekly["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert cron.cron.split()[2:] == ["*", "*", "1"]  # every week, on Mondays


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_is_valid(deployment, monkeypatch):
    monkeypatch.chdir(REPO)  # entrypoints are relative to the repository root, where `prefect deploy` runs
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    parameters = flow.validate_parameters(deployment.get("parameters", {}))
    unknown = set(deployment.get("parameters", {})) - set(flow.parameters.properties)
    assert not unknown, f"{deployment['name']}: parameters the flow does not take: {unknown}"
    schedules = [CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC")) for s in deployment.get("schedules", [])]
    assert deployment["work_pool"]["name"] in ("bertflow-process", "bertflow-gpu")
    # Every parameter of the flow shows in the UI's run form with a description; the values given here validate.
    schema = flow.parameters.model_dump()["properties"]
    undescribed = [name for name, spec in schema.items() if not spec.get("description")]
    assert not undescribed, f"{deployment['name']}: parameters without a description in the UI: {undescribed}"
    built = flow.to_deployment(name=deployment["name"], parameters=parameters, schedules=schedules,
                               description=deployment.get("description"), tags=deployment.get("tags"))
    assert built.name == deployment["name"] and built.parameters == parameters


def test_the_deployments_users_need():
    by_name = {d["name"]: d for d in DEPLOYMENTS}
    nightly = by_name["nightly-continued-pretraining"]
    assert nightly["entrypoint"] == "flows/continued_pretraining.py:continued_pretraining"
    (schedule,) = nightly["schedules"]
    assert CronSchedule(cron=schedule["cron"], timezone="UTC").cron.split()[2:] == ["*", "*", "*"]  # every day
    on_demand = by_name["on-demand-finetuning"]
    assert on_demand["entrypoint"] == "flows/task_model.py:task_model" and not on_demand.get("schedules")
    gpu = by_name["weekly-retraining-gpu"]
    assert gpu["work_pool"]["name"] == "bertflow-gpu" and gpu["parameters"]["pretrain"]["mixed_precision"] == "bf16"
    assert gpu["work_pool"]["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_bad_parameters_are_refused_before_a_run_starts(monkeypatch):
    from prefect.exceptions import ParameterTypeError

    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint("flows/pipeline.py:bert_pipeline")
    # Each stage's parameters are checked against that stage's config: names, choices and bounds.
    for bad in ({"pretrain": {"preset": "bert-huge"}}, {"pretrain": {"max_train_steps": 0}},
                {"ingest": {"validation_fraction": 1.5}}, {"finetune": {"mixed_precision": "fp8"}},
                {"pretrain": {"lerning_rate": 1e-3}}, {"examples": {"shards_dir": "x"}}, {"registered_model_prefix": "a b"}):
        with pytest.raises(ParameterTypeError):
            flow.validate_parameters(bad)
    schema = flow.parameters.model_dump()
    assert len(schema["properties"]) <= 16
    # The run form shows each stage's parameters as fields, with the stage flow's choices and bounds.
    pretrain = schema["definitions"]["PretrainParameters"]
    assert pretrain["properties"]["preset"]["enum"][0] == "bert-tiny" and pretrain["additionalProperties"] is False
    assert pretrain["properties"]["max_train_steps"]["exclusiveMinimum"] == 0
    given = flow.validate_parameters({"pretrain": {"preset": "bert-mini"}})["pretrain"]
    assert given.model_dump(exclude_unset=True) == {"preset": "bert-mini"}


def test_training_tasks_share_a_concurrency_tag():
    from tasks import TRAINING_TAG
    from tasks.finetune import finetune_task
    from tasks.pretrain import pretrain

    assert all(TRAINING_TAG in t.tags for t in (pretrain, finetune_task))


def test_a_named_deployment_runs_without_a_server(monkeypatch, capsys):
    """`python -m flows.pipeline --deployment NAME` runs bert_pipeline with that deployment's parameters (its YAML
    anchors resolved), `--params` on top; an unknown name, or one that runs another flow, is refused by name."""
    import flows.pipeline as pipeline
    from deployments import deployment_parameters

    mini = next(d for d in DEPLOYMENTS if d["name"] == "recipe-modernbert-mini")
    tiny = next(d for d in DEPLOYMENTS if d["name"] == "recipe-modernbert-tiny")
    params = deployment_parameters("recipe-modernbert-mini")
    assert params == mini["parameters"] and params["sources"] == tiny["parameters"]["sources"]  # the anchor
    seen = {}
    monkeypatch.setattr(pipeline, "bert_pipeline", lambda **kwargs: seen.update(kwargs) or {"run": "fake"})
    monkeypatch.setattr(pipeline, "render_summary", lambda summary: f"rendered {summary}")
    assert pipeline.main(["--deployment", "recipe-modernbert-mini", "--params", '{"suite": "off"}']) == 0
    assert seen == {**mini["parameters"], "suite": "off"}
    assert seen["pretrain"]["preset"] == "bert-mini" and "rendered {'run': 'fake'}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no deployment named 'recipe-nope'.*recipe-modernbert-mini"):
        pipeline.main(["--deployment", "recipe-nope"])
    other = next(d["name"] for d in DEPLOYMENTS if d["entrypoint"] != "flows/pipeline.py:bert_pipeline")
    with pytest.raises(ValueError, match=f"no deployment named '{other}'"):
        deployment_parameters(other)
