import subprocess
import sys
import textwrap

import pytest

from bert_core.corpus import SAMPLE_DIR
from bert_core.finetune import FinetuneConfig, finetune
from bert_core.registry import CHAMPION, RegisterConfig, register_model


@pytest.fixture(scope="module")
def classifier(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf")
    return finetune(FinetuneConfig(model_name_or_path=pretrained["final_dir"],
                                   train_file=str(SAMPLE_DIR / "sst2" / "train.tsv"),
                                   validation_file=str(SAMPLE_DIR / "sst2" / "dev.tsv"),
                                   output_dir=str(out / "ft"), max_seq_length=64, max_train_steps=10))


def test_register_gate_and_fresh_process_load(classifier, pretrained, tmp_path):
    home = tmp_path / "home"
    base = dict(registered_model_name="sst2-test", kind="classifier", home=str(home), primary_metric="eval_accuracy")
    first = register_model(RegisterConfig(model_dir=classifier["final_dir"], metrics={"eval_accuracy": 0.70}, **base))
    assert first["version"] == "1" and first["aliases"] == ["candidate", "champion"]

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
        assert set(out["label"]) <= {{"negative", "positive"}} and ((out["score"] > 0.5) & (out["score"] <= 1)).all()
        print("OK", model.metadata.run_id)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("OK"), result.stderr[-3000:]


def test_pretrained_model_fill_mask(pretrained, tmp_path):
    info = register_model(RegisterConfig(model_dir=pretrained["final_dir"], registered_model_name="tiny-test",
                                         kind="pretrained", home=str(tmp_path), primary_metric="eval_mlm_loss",
                                         greater_is_better=False, metrics={"eval_mlm_loss": 6.0}))
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/tiny-test@{CHAMPION}")
    out = model.predict(["the [MASK] of the river", "no mask here"])
    assert len(out["tokens"][0]) == 5 and out["tokens"][1] == [] and info["version"] == "1"
    # The same model gives next-sentence probabilities and sentence vectors by the task param.
    import pandas as pd

    nsp = model.predict(pd.DataFrame({"text": ["the river rose ."], "text_pair": ["the town flooded ."]}),
                        params={"task": "nsp"})
    assert 0 < nsp["is_next_probability"][0] < 1
    vectors = model.predict(["a river bank", "a bank loan"], params={"task": "embed", "pooling": "cls"})
    width = pretrained_width(pretrained)
    assert len(vectors) == 2 and len(vectors["vector"][0]) == width and vectors["tokens"][0][0] == "[CLS]"
    assert vectors["vector"][0] != vectors["vector"][1]
    with pytest.raises(Exception, match="unknown task"):
        model.predict(["x"], params={"task": "translate"})


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
    from bert_core.registry import configure_tracking

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
