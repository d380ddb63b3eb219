import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from bert_core.downstream.classification import FinetuneConfig, finetune
from bert_core.ingest.sources import SAMPLE_DIR
from bert_core.registry.registration import CHAMPION, RegisterConfig, register_model


@pytest.fixture(scope="module")
def classifier(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf")
    return finetune(FinetuneConfig(model_name_or_path=pretrained["final_dir"],
                                   train_file=str(SAMPLE_DIR / "sst2" / "train.tsv"),
                                   validation_file=str(SAMPLE_DIR / "sst2" / "dev.tsv"),
                                   output_dir=str(out / "ft"), max_seq_length=64, max_train_steps=10))


def test_register_gate_and_fresh_process_load(classifier, pretrained, tmp_path):
    home = tmp_path / "home"
    base = dict(registered_model_name="sst2-test", kind="classifier", home=str(home), primary_metric="eval_accuracy",
                task="sst2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = register_model(RegisterConfig(model_dir=classifier["final_dir"], metrics={"eval_accuracy": 0.70}, **base))
    assert first["version"] == "1" and first["aliases"] == ["candidate", "champion"]
    # MLflow's "Add type hints to the `predict` method" warning (printed for every registered model) is gone.
    assert not [w for w in caught if "type hint" in str(w.message).lower()], [str(w.message) for w in caught]
    # final/ holds a Hub model card: the metadata block with the task's dataset and dev result, and the card text.
    card = ModelCard.load(Path(classifier["final_dir"]) / "README.md").data.to_dict()
    assert card["pipeline_tag"] == "text-classification" and card["license"] == "apache-2.0"
    assert card["language"] == "en" and card["datasets"] == ["stanfordnlp/sst2"] and card["library_name"] == "transformers"
    (result,) = card["model-index"][0]["results"]
    assert result["dataset"]["type"] == "stanfordnlp/sst2" and result["metrics"] == [{"type": "accuracy", "value": 0.7}]

    again = register_model(RegisterConfig(model_dir=classifier["final_dir"], metrics={"eval_accuracy": 0.70}, **base))
    assert again["version"] == "1" and again["reused"]  # same model directory: no duplicate version

    # A worse model (another directory) becomes candidate only; a better one takes champion.
    worse_dir = tmp_path / "worse"
    _copy_with_marker(classifier["final_dir"], worse_dir, "worse")
    worse = register_model(RegisterConfig(model_dir=str(worse_dir), metrics={"eval_accuracy": 0.60}, **base))
    assert worse["version"] == "2" and worse["aliases"] == ["candidate"] and not worse["promoted"]
    better_dir = tmp_path / "better"
    _copy_with_marker(classifier["final_dir"], better_dir, "better")
    better = register_model(RegisterConfig(model_dir=str(better_dir), metrics={"eval_accuracy": 0.80}, **base))
    assert better["aliases"] == ["candidate", CHAMPION] and better["promoted"]

    script = textwrap.dedent(f"""
        import mlflow
        mlflow.set_tracking_uri("sqlite:///{home / 'mlflow.db'}")
        model = mlflow.pyfunc.load_model("models:/sst2-test@champion")
        out = model.predict(["a gorgeous, witty, seductive movie", "a dull and lifeless mess"])
        assert list(out.columns) == ["label", "label_id", "score"], out
        assert model.metadata.get_output_schema().input_names() == ["label", "label_id", "score"]
        from pathlib import Path
        (card,) = Path(mlflow.artifacts.download_artifacts("models:/sst2-test@champion")).glob("artifacts/*/README.md")
        text = card.read_text()
        assert text.startswith("---") and "pipeline_tag: text-classification" in text.split("---")[1], text[:500]
        assert set(out["label"]) <= {{"negative", "positive"}} and ((out["score"] > 0.5) & (out["score"] <= 1)).all()
        print("OK", model.metadata.run_id)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("OK"), result.stderr[-3000:]


def test_the_gate_uses_the_recorded_figure_and_refuses_new_ones_for_the_same_weights(classifier, tmp_path):
    """Registering a registered model directory again with a better number used to make it champion on that
    unrecorded number; the recorded figure is what the gate compares, and different figures are an error."""
    base = dict(registered_model_name="regate-test", kind="classifier", home=str(tmp_path / "home"),
                primary_metric="eval_accuracy")
    champion_dir = tmp_path / "champion"
    _copy_with_marker(classifier["final_dir"], champion_dir, "champion")
    register_model(RegisterConfig(model_dir=str(champion_dir), metrics={"eval_accuracy": 0.80}, **base))
    weak = register_model(RegisterConfig(model_dir=classifier["final_dir"], metrics={"eval_accuracy": 0.509}, **base))
    assert weak["version"] == "2" and not weak["promoted"]
    with pytest.raises(ValueError, match=r"already registered as regate-test v2 with other figures: "
                                         r"eval_accuracy 0\.99 \(recorded 0\.509\)"):
        register_model(RegisterConfig(model_dir=classifier["final_dir"], metrics={"eval_accuracy": 0.99}, **base))
    again = register_model(RegisterConfig(model_dir=classifier["final_dir"], metrics={"eval_accuracy": 0.509}, **base))
    assert again["reused"] and not again["promoted"] and CHAMPION not in again["aliases"]
    import mlflow

    assert str(mlflow.MlflowClient().get_model_version_by_alias("regate-test", CHAMPION).version) == "1"


def test_pretrained_model_fill_mask(pretrained, tmp_path):
    suite = {"suite_score": 0.8, "suite_sst2_pretrained_mean": 0.8, "suite_sst2_twin_mean": 0.75}
    info = register_model(RegisterConfig(model_dir=pretrained["final_dir"], registered_model_name="tiny-test",
                                         kind="pretrained", home=str(tmp_path), primary_metric="eval_mlm_loss",
                                         greater_is_better=False, metrics={"eval_mlm_loss": 6.0, **suite}))
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/tiny-test@{CHAMPION}")
    # The input schema names the columns (nsp reads text_pair): texts come as a `text` column.
    assert model.metadata.get_input_schema().input_names() == ["text", "text_pair"]
    assert set(model.metadata.get_output_schema().input_names()) == {"tokens", "scores", "is_next_probability", "vector"}
    out = model.predict({"text": ["the [MASK] of the river", "no mask here"]})
    assert len(out["tokens"][0]) == 5 and out["tokens"][1] == [] and info["version"] == "1"
    with pytest.raises(Exception, match=r"missing inputs \['text'\]"):
        model.predict(["a list is not a text column"])
    # The same model gives next-sentence probabilities and sentence vectors by the task param.
    import pandas as pd

    nsp = model.predict(pd.DataFrame({"text": ["the river rose ."], "text_pair": ["the town flooded ."]}),
                        params={"task": "nsp"})
    assert 0 < nsp["is_next_probability"][0] < 1
    vectors = model.predict({"text": ["a river bank", "a bank loan"]}, params={"task": "embed", "pooling": "cls"})
    width = pretrained_width(pretrained)
    assert len(vectors) == 2 and len(vectors["vector"][0]) == width and vectors["tokens"][0][0] == "[CLS]"
    assert vectors["vector"][0] != vectors["vector"][1]
    with pytest.raises(Exception, match="unknown task"):
        model.predict({"text": ["x"]}, params={"task": "translate"})
    # Its Hub card reports the downstream suite (pretrained arm, the twin beside it) as the evaluation results.
    card = ModelCard.load(Path(pretrained["final_dir"]) / "README.md").data.to_dict()
    assert card["pipeline_tag"] == "fill-mask" and "datasets" not in card  # the bundled sample: no hf: source
    (result,) = card["model-index"][0]["results"]
    assert result["dataset"] == {"name": "sst2", "type": "stanfordnlp/sst2", "split": "validation"}
    assert result["metrics"] == [{"type": "accuracy", "value": 0.8,
                                  "name": "accuracy fine-tuned, mean over seeds (random init: 0.7500)"}]


def _copy_with_marker(src, dst, marker):
    import shutil

    shutil.copytree(src, dst)
    (dst / "MARKER").write_text(marker)  # a different directory content -> a different model hash


def test_artifacts_go_under_the_data_directory_not_the_cwd(classifier, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    info = register_model(RegisterConfig(model_dir=classifier["final_dir"], registered_model_name="where-test",
                                         home=str(home), metrics={"eval_accuracy": 0.5}))
    artifact_uri = mlflow.get_run(info["run_id"]).info.artifact_uri
    assert artifact_uri.startswith((home / "mlartifacts").as_uri()), artifact_uri
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    from bert_core.tracking import configure_tracking

    monkeypatch.setenv("BERTFLOW_HOME", str(tmp_path / "a"))
    assert configure_tracking() == f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"
    monkeypatch.setenv("BERTFLOW_HOME", str(tmp_path / "b"))  # our own earlier URI does not stick
    assert configure_tracking() == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")  # a user's server wins...
    assert configure_tracking() == "http://127.0.0.1:5999"
    assert configure_tracking(tmp_path / "c") == f"sqlite:///{tmp_path / 'c' / 'mlflow.db'}"  # ...unless home is explicit


def pretrained_width(pretrained) -> int:
    import json
    from pathlib import Path

    return json.loads((Path(pretrained["final_dir"]) / "config.json").read_text())["hidden_size"]


def test_model_card_lineage_and_rollback(classifier, tmp_path):
    from mlflow.tracking import MlflowClient

    from bert_core.registry.registration import rollback

    home = tmp_path / "home"
    base = dict(registered_model_name="card-test", home=str(home), primary_metric="eval_accuracy",
                tags={"bertflow.git_commit": "abc123", "bertflow.parent_model": "models:/tiny/1"})
    first = register_model(RegisterConfig(model_dir=classifier["final_dir"], metrics={"eval_accuracy": 0.7}, **base))
    better_dir = tmp_path / "better"
    _copy_with_marker(classifier["final_dir"], better_dir, "better")
    second = register_model(RegisterConfig(model_dir=str(better_dir), metrics={"eval_accuracy": 0.8}, **base))
    assert second["promoted"] and CHAMPION in second["aliases"]
    client = MlflowClient()
    version = client.get_model_version("card-test", second["version"])
    assert "| eval_accuracy | 0.8000 |" in version.description and "abc123" in version.description
    assert "models:/tiny/1" in version.description and "models:/card-test@champion" in version.description
    assert version.tags["bertflow.promoted_over"] == first["version"]
    assert client.get_registered_model("card-test").description.startswith("# card-test")

    moved = rollback("card-test", first["version"], reason="regression seen in production", home=str(home))
    assert moved["previous_champion"] == second["version"] and moved["champion"] == first["version"]
    assert str(client.get_model_version_by_alias("card-test", CHAMPION).version) == first["version"]
    assert "regression seen" in client.get_model_version("card-test", first["version"]).tags["bertflow.rollback"]
    with pytest.raises(ValueError, match="no version 9"):
        rollback("card-test", 9, home=str(home))
    # The same through the CLI, as an operator would run it.
    result = subprocess.run([sys.executable, "-m", "bert_core", "rollback", "--model", "card-test", "--version",
                             second["version"]], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(client.get_model_version_by_alias("card-test", CHAMPION).version) == second["version"]


_PROMOTER = textwrap.dedent("""
    import contextlib, sys, time
    from pathlib import Path
    import mlflow
    from mlflow.tracking import MlflowClient
    from bert_core import tracking
    from bert_core.registry import registration

    home, version, accuracy, delay, locked = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1"
    start = float(sys.argv[6])
    tracking.configure_tracking(home)
    read = MlflowClient.get_model_version_by_alias

    def slow_read(self, name, alias):  # widen the window between reading the champion and moving the alias
        result = read(self, name, alias)
        Path(home, f"read-{version}").touch()
        time.sleep(delay)
        return result

    set_alias = MlflowClient.set_registered_model_alias

    def alias_once_both_have_read(self, name, alias, target):
        # Unlocked, the race needs both reads before either write; on a slow machine the later starter's first
        # read can otherwise come after the other's write (seen once), and there is no race to show.
        deadline = time.monotonic() + 60
        while (not locked and alias == registration.CHAMPION and time.monotonic() < deadline
               and not all(Path(home, f"read-{v}").exists() for v in ("2", "3"))):
            time.sleep(0.01)
        return set_alias(self, name, alias, target)

    MlflowClient.get_model_version_by_alias = slow_read
    MlflowClient.set_registered_model_alias = alias_once_both_have_read
    if not locked:
        registration.promotion_lock = lambda *a, **k: contextlib.nullcontext()
    Path(home, f"ready-{version}").touch()
    while not Path(home, "go").exists():
        time.sleep(0.01)
    # Offset the two starts a little: both writing the candidate alias in the same instant is an SQLite insert
    # collision, not the read-then-write race this test is about (both still read the champion before either writes).
    time.sleep(start)
    config = registration.RegisterConfig(model_dir="-", registered_model_name="race", home=home,
                                     metrics={"eval_accuracy": accuracy})
    print(registration.promote(MlflowClient(), config, version))
""")


@pytest.mark.parametrize("locked", [False, True])
def test_two_promotions_at_once_leave_the_better_champion(tmp_path, locked):
    """v1 (0.70) is champion; v2 (0.80) and v3 (0.85) are promoted at the same moment. Without the lock both read v1
    and the slower, worse v2 writes last (the race is real); with it the result is v3, whatever the order."""
    from mlflow.tracking import MlflowClient

    from bert_core.tracking import configure_tracking

    home = tmp_path / "home"
    configure_tracking(home)
    client = MlflowClient()
    client.create_registered_model("race")
    for accuracy in (0.70, 0.80, 0.85):
        mv = client.create_model_version("race", source=str(tmp_path))
        client.set_model_version_tag("race", mv.version, "bertflow.metric.eval_accuracy", str(accuracy))
    client.set_registered_model_alias("race", CHAMPION, "1")
    processes = [subprocess.Popen([sys.executable, "-c", _PROMOTER, str(home), version, accuracy, delay,
                                   "1" if locked else "0", start], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
                 for version, accuracy, delay, start in (("2", "0.80", "3.0", "0.25"), ("3", "0.85", "0.5", "0"))]
    deadline = __import__("time").monotonic() + 240
    while not all((home / f"ready-{v}").exists() for v in ("2", "3")):
        assert __import__("time").monotonic() < deadline and all(p.poll() is None for p in processes)
        __import__("time").sleep(0.05)
    (home / "go").touch()
    outputs = [p.communicate(timeout=240) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err[-2000:] for _, err in outputs]
    champion = str(client.get_model_version_by_alias("race", CHAMPION).version)
    holders = [v for v in ("1", "2", "3") if CHAMPION in client.get_model_version("race", v).aliases]
    assert holders == [champion]
    assert champion == ("3" if locked else "2"), outputs


def test_credentials_never_reach_params_tags_or_links(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from bert_core.tracking import redact, start_run, ui_links

    secret = "https://alice:s3cret@mlflow.example.com/api?token=tok123&x=1"
    assert redact(secret) == "https://***@mlflow.example.com/api?token=***&x=1"
    assert redact("plain text, no uri") == "plain text, no uri"
    run_id = start_run("redact-test", "r", {"sources": [secret], "nested": {"uri": secret}}, tmp_path)
    params = MlflowClient().get_run(run_id).data.params
    assert "s3cret" not in str(params) and "tok123" not in str(params) and "mlflow.example.com" in params["nested.uri"]
    monkeypatch.setattr("mlflow.get_tracking_uri", lambda: "https://bob:hunter2@tracking.example.com")
    assert ui_links(model=("m", "1"))["model_version"] == "https://tracking.example.com/#/models/m/versions/1"


def test_registered_models_hold_safetensors_and_no_pickles(pretrained, tmp_path):
    """What a registered version stores: weights as safetensors, the pyfunc wrapper as source code, no pickles."""
    from pathlib import Path

    import mlflow

    info = register_model(RegisterConfig(model_dir=pretrained["final_dir"], registered_model_name="files-test",
                                         kind="pretrained", home=str(tmp_path), primary_metric="eval_mlm_loss",
                                         greater_is_better=False, metrics={"eval_mlm_loss": 6.0}))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info["model_uri"], dst_path=str(tmp_path / "dl")))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)
    pickles = [p.name for p in files if p.suffix in {".pkl", ".pickle", ".bin", ".pt", ".pth", ".joblib"}]
    assert not pickles, pickles
    flavor = mlflow.models.Model.load(str(local)).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # the wrapper is loaded as source code
    assert flavor["model_code_path"].endswith("pyfunc_model.py") and "python_model" not in flavor
