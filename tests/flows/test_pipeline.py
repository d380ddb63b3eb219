"""The whole pipeline as a user runs it, on tiny settings, under a temporary Prefect backend."""

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bert_core.registry.summary import render_summary
from flows.pipeline import bert_pipeline

TINY = dict(examples={"tokenizer": {"vocab_size": 2000}, "max_seq_length": 64},
            pretrain={"max_train_steps": 40, "num_warmup_steps": 4, "eval_steps": 20, "checkpointing_steps": 20,
                      "per_device_train_batch_size": 16},
            finetune={"num_train_epochs": 1, "max_seq_length": 64}, suite={"size": "tiny"},
            registered_model_prefix="flowtest")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    os.environ["BERTFLOW_HOME"] = str(home)
    summary = bert_pipeline(**TINY)
    return home, summary


def test_pipeline_runs_every_stage(run):
    home, summary = run
    work = Path(summary["work_dir"])
    assert work == home / "work"
    assert summary["corpus"]["documents_read"] == summary["corpus"]["documents_kept"] + sum(
        summary["corpus"]["documents_rejected"].values())
    assert summary["examples"]["train"]["num_examples"] > 1000
    assert summary["pretrained"]["eval_mlm_loss"] < summary["pretrained"]["initial_eval_mlm_loss"]
    assert 0 <= summary["classifier"]["eval_accuracy"] <= 1
    assert (work / "pretrain" / "bert-tiny" / "final" / "model.safetensors").is_file()
    assert (work / "reports" / "pretraining_curves.png").is_file()
    assert (work / "reports" / "classifier" / "confusion_matrix.png").is_file()
    registered = summary["registered"]
    assert registered["pretrained"]["name"] == "flowtest-bert-tiny"
    assert registered["classifier"]["name"] == "flowtest-sst2"
    assert "champion" in registered["classifier"]["aliases"]
    # The pretrained version lives in the run that training logged its metrics to, step by step, while it ran.
    from mlflow.tracking import MlflowClient

    run_id = registered["pretrained"]["run_id"]
    steps = [m.step for m in MlflowClient().get_metric_history(run_id, "loss")]
    assert steps == sorted(steps) and steps[-1] == TINY["pretrain"]["max_train_steps"] and len(steps) >= 4
    assert MlflowClient().get_run(run_id).data.params["preset"] == "bert-tiny"
    text = render_summary(summary)
    assert "flowtest-sst2 v1" in text and "mlflow ui --backend-store-uri sqlite:///" in text
    assert f"NSP random-next {summary['examples']['train']['quality']['nsp_random_next_share']:.1%}" in text
    # A run without sentence pairs (pair_objective "none", every recipe's) has no NSP share to print: the summary of
    # a finished recipe run once failed the whole flow at its last line on it.
    mlm_only = copy.deepcopy(summary)
    mlm_only["examples"]["train"]["quality"]["nsp_random_next_share"] = None
    assert "MLM only, no sentence pairs" in render_summary(mlm_only, markdown=True)
    assert "NSP accuracy" in text and "NSP accuracy" not in render_summary(mlm_only)  # no pair head to score
    # Dynamic masking: the training shards hold no masks (their share is not a number); the validation shards' is.
    assert f"masked {summary['examples']['train']['quality']['masked_share_of_maskable']:.1%} of maskable" in text
    dynamic = copy.deepcopy(mlm_only)
    dynamic["examples"]["train"]["masking"] = "dynamic"
    del dynamic["examples"]["train"]["quality"]["masked_share_of_maskable"]
    share = dynamic["examples"]["validation"]["quality"]["masked_share_of_maskable"]
    assert f"masked per batch while training (validation shards: {share:.1%} of maskable tokens)" in \
        render_summary(dynamic) and "nan" not in render_summary(dynamic)


def test_the_cli_prints_a_saved_summary_as_the_pipeline_did(run, tmp_path):
    import subprocess
    import sys

    from bert_core import stage
    from tests.conftest import REPO

    home, summary = run
    stage.write_json(tmp_path / "summary.json", summary)
    out = subprocess.run([sys.executable, "-m", "bert_core", "summary", str(tmp_path / "summary.json")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == render_summary(summary).strip()


def test_one_parent_run_with_a_nested_run_per_stage(run):
    from mlflow.tracking import MlflowClient

    home, summary = run
    client = MlflowClient()
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["prefect.flow_run_id"] == summary["flow_run_id"]
    assert parent.data.params["pretrain.max_train_steps"] == str(TINY["pretrain"]["max_train_steps"])  # the flow's
    assert parent.data.metrics["eval_accuracy"] == summary["classifier"]["eval_accuracy"]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert {"ingest", "examples", "pretrain-bert-tiny", "evaluate", "finetune-sst2"} <= set(by_name), sorted(by_name)
    assert all(r.info.status == "FINISHED" for r in children)
    for stage_run in ("pretrain-bert-tiny", "finetune-sst2"):  # the precision "auto" ran in (pinned: conftest)
        assert by_name[stage_run].data.tags["bertflow.mixed_precision"] == "no", stage_run
    ingest = by_name["ingest"]
    assert ingest.data.metrics["documents_read"] == summary["corpus"]["documents_read"]
    assert ingest.data.params["validation_fraction"] == "0.05"
    assert "manifest.json" in {a.path for a in client.list_artifacts(ingest.info.run_id)}
    assert by_name["examples"].data.metrics["train_num_examples"] == summary["examples"]["train"]["num_examples"]
    evaluate_files = {a.path for a in client.list_artifacts(by_name["evaluate"].info.run_id)}
    assert {"pretraining_curves.png", "confusion_matrix.png", "report.md"} <= evaluate_files, evaluate_files
    # The registered task model lives in the nested fine-tuning run and carries a model card.
    classifier = summary["registered"]["classifier"]
    assert classifier["run_id"] == by_name["finetune-sst2"].info.run_id
    card = client.get_model_version(classifier["name"], classifier["version"]).description
    assert "## Evaluation" in card and "sst2" in card and "tokenizer_sha256" in card
    assert summary["mlflow_links"]["pipeline_run"].endswith(f"/runs/{parent.info.run_id}")


def test_registered_classifier_predicts_in_a_fresh_process(run):
    home, summary = run
    script = textwrap.dedent(f"""
        import mlflow
        mlflow.set_tracking_uri("sqlite:///{home / 'mlflow.db'}")
        model = mlflow.pyfunc.load_model("models:/flowtest-sst2@champion")
        out = model.predict(["an utterly charming and hilarious film", "a tedious , joyless slog"])
        assert len(out) == 2 and set(out["label"]) <= {{"negative", "positive"}}, out
        version = mlflow.MlflowClient().get_model_version_by_alias("flowtest-sst2", "champion")
        tags = version.tags
        for key in ("bertflow.tokenizer_sha256", "bertflow.train_shards_manifest_sha256", "bertflow.git_commit",
                    "bertflow.parent_model", "prefect.flow_run_id", "bertflow.metric.eval_accuracy",
                    "bertflow.config_sha256", "bertflow.corpus_sources", "bertflow.ingest_manifest_sha256"):
            assert key in tags, key
        print("OK")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stderr[-3000:]


def test_rerun_reuses_every_stage_and_version(run):
    home, summary = run
    again = bert_pipeline(**TINY)
    assert again["registered"]["classifier"]["version"] == summary["registered"]["classifier"]["version"]
    assert again["registered"]["pretrained"]["version"] == summary["registered"]["pretrained"]["version"]
    assert again["pretrained"] == summary["pretrained"]


def test_continued_pretraining_from_the_champion(run, tmp_path):
    """The nightly flow: new text, the champion's tokenizer and weights, a gate on the same held-out shards."""
    from mlflow.tracking import MlflowClient

    from bert_core.ingest.sources import SAMPLE_DIR
    from flows.continued_pretraining import continued_pretraining

    params = dict(sources=[str(SAMPLE_DIR / "corpus" / "wikipedia")], base_model="models:/flowtest-bert-tiny@champion",
                  work_dir=str(tmp_path / "continued"), ingest={"validation_fraction": 0.1},
                  examples={"max_seq_length": 64},
                  pretrain={"max_train_steps": 8, "num_warmup_steps": 1, "per_device_train_batch_size": 8})
    result = continued_pretraining(**params)
    info = result["registered"]
    assert info["name"] == "flowtest-bert-tiny" and result["base_version"] == "1"
    assert info["version"] != "1" and "candidate" in info["aliases"]
    assert "on the same evaluation set" in info["reason"] or info["reason"] == "already champion", info["reason"]
    # Same held-out shards for both: the gate decided by comparing these two figures.
    assert info["promoted"] == (result["eval_mlm_loss"] < result["base_eval_mlm_loss"])
    tags = MlflowClient().get_model_version(info["name"], info["version"]).tags
    assert tags["bertflow.base_model"].startswith("models:/flowtest-bert-tiny@champion (v1)")
    # Nothing new: a rerun reuses every stage and the registered version.
    if info["promoted"]:
        params["base_model"] = "models:/flowtest-bert-tiny/1"
    again = continued_pretraining(**params)
    assert again["registered"]["version"] == info["version"] and again["registered"]["reused"]

    # With a suite the suite score decides: the new encoder against the champion on the same suite.
    suited = continued_pretraining(**{**params, "base_model": "models:/flowtest-bert-tiny/1",
                                      "pretrain": {**params["pretrain"], "max_train_steps": 6},
                                      "work_dir": str(tmp_path / "suited"), "suite": {"size": "tiny"}})
    decision = suited["registered"]
    assert decision["reason"].startswith("suite_score ") and "on the same evaluation set" in decision["reason"]
    assert "suite_paired_p_value" in decision["reason"] and "suite_sst2_delta" in suited["suite"]
    tags = MlflowClient().get_model_version(decision["name"], decision["version"]).tags
    assert "bertflow.gate.suite_paired_p_value" in tags and "bertflow.metric.suite_score" in tags


def test_on_demand_task_model_from_the_registered_encoder(run, tmp_path):
    from flows.task_model import task_model

    home, summary = run
    result = task_model(task_name="sst2", base_model="models:/flowtest-bert-tiny/1", work_dir=str(tmp_path / "tm"),
                        finetune={"num_train_epochs": 1}, registered_model_prefix="flowtest")
    info = result["registered"]
    assert info["name"] == "flowtest-sst2" and result["base_model"] == "models:/flowtest-bert-tiny/1"
    assert result["champion_metrics"] is not None  # scored next to the champion on the same dev file
    assert "on the same evaluation set" in info["reason"] or info["reason"] == "already champion", info["reason"]


def test_a_task_defined_only_in_a_file_runs_through_the_pipeline(run, tmp_path):
    """A user's task of a known kind needs no code: its catalogue entry in a JSON file. The corpus, shards and
    encoder of the module's run are reused (same dev texts kept out of the corpus), so only fine-tuning runs."""
    import json

    from bert_core.downstream.catalogue import SAMPLE_DIR

    home, summary = run
    task_file = tmp_path / "reviews.json"
    task_file.write_text(json.dumps({"name": "reviews", "kind": "sentence", "text_column": "sentence",
                                     "label_column": "label", "label_names": ["bad", "good"],
                                     "train_file": str(SAMPLE_DIR / "sst2" / "train.tsv"),
                                     "validation_file": str(SAMPLE_DIR / "sst2" / "dev.tsv")}))
    result = bert_pipeline(**TINY, task_name="reviews", task_file=str(task_file))
    assert result["task"] == {"name": "reviews", "kind": "classifier", "primary_metric": "eval_accuracy", "pairs": False}
    assert result["registered"]["pretrained"]["reused"]  # the same encoder: nothing upstream was redone
    info = result["registered"]["classifier"]
    assert info["name"] == "flowtest-reviews" and "champion" in info["aliases"]
    config = json.loads((Path(result["work_dir"]) / "finetune" / "reviews" / "stage.json").read_text())["config"]
    assert config["label_names"] == ["bad", "good"]


def test_rollback_flow_moves_the_champion_back(run):
    from mlflow.tracking import MlflowClient

    from flows.rollback import rollback_champion

    client = MlflowClient()
    before = str(client.get_model_version_by_alias("flowtest-sst2", "champion").version)
    result = rollback_champion(registered_model_name="flowtest-sst2", version="1", reason="flow test")
    assert result["previous_champion"] == before and result["champion"] == "1"
    assert str(client.get_model_version_by_alias("flowtest-sst2", "champion").version) == "1"
    assert "flow test" in client.get_model_version("flowtest-sst2", "1").tags["bertflow.rollback"]


def _validation_ids(work: Path) -> set[str]:
    import pyarrow.parquet as pq

    return {i for f in sorted((work / "ingest").glob("documents-validation-*.parquet"))
            for i in pq.read_table(f, columns=["doc_id"]).column("doc_id").to_pylist()}


def test_the_pipeline_seed_reaches_every_stage(run, tmp_path):
    """`seed` is every stage's: another seed holds out other documents, writes other shards, and trains and
    fine-tunes with it (the same corpus and settings otherwise)."""
    import json

    home, summary = run
    seeded = bert_pipeline(**{**TINY, "registered_model_prefix": "flowseed",
                              "pretrain": {**TINY["pretrain"], "max_train_steps": 4, "eval_steps": 4,
                                           "checkpointing_steps": 4},
                              "finetune": {**TINY["finetune"], "max_train_steps": 2}},
                           work_dir=str(tmp_path / "seeded"), seed=7)
    ours, theirs = Path(summary["work_dir"]), Path(seeded["work_dir"])
    assert seeded["corpus"]["documents_kept"] == summary["corpus"]["documents_kept"]  # the same corpus ...
    assert _validation_ids(theirs) and _validation_ids(theirs) != _validation_ids(ours)  # ... split otherwise
    checksums = [json.loads((w / "examples" / "train" / "manifest.json").read_text())["shards"] for w in (ours, theirs)]
    assert checksums[0] != checksums[1]
    for name in ("ingest", "examples", "pretrain/bert-tiny", "finetune/sst2"):
        assert json.loads((theirs / name / "stage.json").read_text())["config"]["seed"] == 7, name


def test_the_suite_runs_in_the_pipeline_and_reaches_mlflow(run):
    """The encoder is fine-tuned beside its random-init twin; the suite's figures are the encoder's gate metric,
    on its training run and its registered version; the summary says the delta."""
    from mlflow.tracking import MlflowClient

    home, summary = run
    report = summary["suite"]["report"]
    (row,) = report["tasks"]
    assert row["task"] == "sst2" and len(row["pretrained_scores"]) == len(row["twin_scores"]) == 2
    assert "suite: pretrained vs random init: SST2 " in render_summary(summary)
    encoder = summary["registered"]["pretrained"]
    client = MlflowClient()
    version = client.get_model_version(encoder["name"], encoder["version"])
    assert float(version.tags["bertflow.metric.suite_score"]) == pytest.approx(report["suite_score"])
    assert float(version.tags["bertflow.metric.suite_sst2_delta"]) == pytest.approx(row["delta"])
    metrics = client.get_run(encoder["run_id"]).data.metrics
    assert metrics["suite_sst2_twin_mean"] == pytest.approx(row["twin_mean"])
    files = {a.path for a in client.list_artifacts(encoder["run_id"])}
    assert {"report.json", "report.md", "report.png"} <= files, files
    assert (Path(report["output_dir"]) / "report.png").stat().st_size > 5000


def test_the_champions_tokenizer_is_reused_when_there_is_one(run):
    """The weekly deployment's examples.tokenizer_path: the champion encoder's tokenizer, or a new one while no
    champion exists."""
    from bert_core.examples.tokenizer import load_backend, tokenizer_hash
    from flows.examples import _local_tokenizer

    home, summary = run
    assert _local_tokenizer("models:/nobody-yet@champion") is None
    local = _local_tokenizer("models:/flowtest-bert-tiny@champion")
    trained = Path(summary["work_dir"]) / "examples" / "tokenizer"
    assert tokenizer_hash(load_backend(local)) == tokenizer_hash(load_backend(trained))
    assert _local_tokenizer(str(trained)) == str(trained)
