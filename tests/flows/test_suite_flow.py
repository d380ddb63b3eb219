"""The downstream-suite flow under a temporary Prefect backend: the report comes back and is published."""

from prefect.client.orchestration import get_client

from flows.suite import suite_flow


def test_the_suite_flow_publishes_the_comparison(pretrained, tmp_path):
    report = suite_flow(encoder=pretrained["final_dir"], work_dir=str(tmp_path), suite={"size": "tiny", "seeds": [0]})
    (row,) = report["tasks"]
    assert row["task"] == "sst2" and len(row["pretrained_scores"]) == len(row["twin_scores"]) == 1
    # Each encoder's runs go under suite/<its run directory's name>: a champion's suite never overwrites them.
    assert report["output_dir"] == str(tmp_path / "suite" / "run")
    assert (tmp_path / "suite" / "run" / "report.md").read_text().startswith("# Downstream suite")
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts()}
    assert "suite" in artifacts and "suite-report" in artifacts
    assert artifacts["suite"].data and "sst2" in str(artifacts["suite"].data)
