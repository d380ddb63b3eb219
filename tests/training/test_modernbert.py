"""A ModernBERT encoder goes through the same stages as BERT: pretrain (CLI), fine-tune (CLI), register, predict
(CLI and the registered pyfunc in a fresh process)."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoModelForMaskedLM, AutoTokenizer

from bert_core import stage
from bert_core.downstream.classification import FinetuneConfig
from bert_core.examples.generation import generate_examples
from bert_core.ingest.sources import SAMPLE_DIR
from bert_core.registry.registration import CHAMPION, RegisterConfig, register_model
from tests.conftest import REPO, TINY_EXAMPLES, tiny_pretrain_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "bert_core", *args], cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def modernbert(documents_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("modernbert")
    shards = generate_examples(replace(TINY_EXAMPLES, pair_objective="none"), documents_dir, root / "examples")
    config = tiny_pretrain_config(shards, root / "pretrain", architecture="modernbert", max_train_steps=40,
                                  eval_steps=40, checkpointing_steps=40)
    stage.write_json(root / "pretrain.json", config)
    _cli("pretrain", "--config", str(root / "pretrain.json"))
    return root


def test_modernbert_pretrains_and_loads_with_the_auto_classes(modernbert, examples_dir, tmp_path):
    summary = stage.read_json(modernbert / "pretrain" / "summary.json")
    assert summary["eval_mlm_loss"] < summary["initial_eval_mlm_loss"] - 0.5
    final = modernbert / "pretrain" / "final"
    model = AutoModelForMaskedLM.from_pretrained(final)
    assert type(model).__name__ == "ModernBertForMaskedLM" and model.config.pad_token_id == 0
    assert json.loads((final / "bertflow_model.json").read_text())["architecture"] == "modernbert"
    assert "token_type_ids" not in AutoTokenizer.from_pretrained(final)("a river")  # ModernBERT takes none
    # Its MLflow run and registered name say which family it is (a BERT of the same size is bertflow-bert-tiny).
    from bert_core.registry.records import registered_name

    assert registered_name("bertflow", str(final)) == "bertflow-modernbert-tiny"
    # An NSP/SOP shard set is refused for it, naming the fix.
    with pytest.raises(ValueError, match="pair_objective 'none'"):
        from bert_core.training.pretrain import pretrain

        pretrain(tiny_pretrain_config(examples_dir, tmp_path / "x", architecture="modernbert"))


def test_modernbert_fine_tunes_registers_and_predicts(modernbert, tmp_path):
    config = FinetuneConfig(model_name_or_path=str(modernbert / "pretrain" / "final"),
                            train_file=str(SAMPLE_DIR / "sst2" / "train.tsv"),
                            validation_file=str(SAMPLE_DIR / "sst2" / "dev.tsv"), output_dir=str(tmp_path / "ft"),
                            max_seq_length=64, max_train_steps=20)
    stage.write_json(tmp_path / "ft.json", config)
    _cli("finetune", "--config", str(tmp_path / "ft.json"))
    classifier = tmp_path / "ft" / "final"
    assert json.loads((classifier / "config.json").read_text())["model_type"] == "modernbert"
    predicted = json.loads(_cli("predict", "--model", str(classifier), "--task", "classify", "--text",
                                "a gorgeous, witty movie").stdout.splitlines()[0])
    assert predicted["label"] in {"negative", "positive"}
    masks = json.loads(_cli("predict", "--model", str(modernbert / "pretrain" / "final"), "--task", "fill-mask",
                            "--text", "the [MASK] of the river").stdout.splitlines()[0])
    assert len(masks["masks"][0]) == 5
    nsp = subprocess.run([sys.executable, "-m", "bert_core", "predict", "--model",
                          str(modernbert / "pretrain" / "final"), "--task", "nsp", "--text", "a", "--pair", "b"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert nsp.returncode == 2 and "without a next-sentence head" in nsp.stderr

    home = tmp_path / "home"
    register_model(RegisterConfig(model_dir=str(classifier), registered_model_name="modern-sst2", home=str(home),
                                  metrics={"eval_accuracy": 0.5}))
    register_model(RegisterConfig(model_dir=str(modernbert / "pretrain" / "final"), registered_model_name="modern-mlm",
                                  home=str(home), primary_metric="eval_mlm_loss", greater_is_better=False,
                                  metrics={"eval_mlm_loss": 6.0}))
    script = textwrap.dedent(f"""
        import mlflow
        mlflow.set_tracking_uri("sqlite:///{home / 'mlflow.db'}")
        classifier = mlflow.pyfunc.load_model("models:/modern-sst2@{CHAMPION}")
        out = classifier.predict(["a gorgeous, witty, seductive movie", "a dull and lifeless mess"])
        assert set(out["label"]) <= {{"negative", "positive"}} and len(out) == 2, out
        encoder = mlflow.pyfunc.load_model("models:/modern-mlm@{CHAMPION}")
        masks = encoder.predict({{"text": ["the [MASK] of the river"]}})
        assert len(masks["tokens"][0]) == 5, masks
        vectors = encoder.predict({{"text": ["a river bank"]}}, params={{"task": "embed"}})
        assert len(vectors["vector"][0]) == 128, vectors
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0 and result.stdout.startswith("OK"), result.stderr[-3000:]
