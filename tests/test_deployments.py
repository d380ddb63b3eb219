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
    assert deployment["work_pool"]["name"] == "bertflow-process"
    built = flow.to_deployment(name=deployment["name"], parameters=parameters, schedules=schedules,
                               description=deployment.get("description"), tags=deployment.get("tags"))
    assert built.name == deployment["name"] and built.parameters == parameters
