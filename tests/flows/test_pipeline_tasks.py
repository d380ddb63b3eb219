"""bert-pipeline with a task other than sentence classification: extractive QA on the bundled SQuAD sample, run
twice, so that the second run is compared with the first run's champion on the same dev set."""

import os
from pathlib import Path

import pytest

from bert_core.registry.summary import render_summary
from flows.pipeline import bert_pipeline

TINY = dict(examples={"tokenizer": {"vocab_size": 2000}, "max_seq_length": 64},
            pretrain={"max_train_steps": 20, "num_warmup_steps": 2, "eval_steps": 20, "checkpointing_steps": 20,
                      "per_device_train_batch_size": 16},
            finetune={"num_train_epochs": 1}, suite="off", registered_model_prefix="qaflow", task_name="squad")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    os.environ["BERTFLOW_HOME"] = str(home)
    first = bert_pipeline(**TINY)
    second = bert_pipeline(**{**TINY, "seed": 43})  # same pretraining inputs except the seed: a new QA model
    return home, first, second


def test_qa_pipeline_registers_an_answering_model(runs):
    home, first, _ = runs
    assert first["task"] == {"name": "squad", "kind": "question-answering", "primary_metric": "eval_f1", "pairs": False}
    assert first["classifier"]["eval_num_questions"] == 108 and 0 <= first["classifier"]["eval_f1"] <= 100
    assert first["comparison"] is None  # nothing registered before
    reports = Path(first["work_dir"]) / "reports" / "classifier"
    assert (reports / "f1_by_question_type.png").is_file() and (reports / "report.md").is_file()
    registered = first["registered"]["classifier"]
    assert registered["name"] == "qaflow-squad" and "champion" in registered["aliases"]
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model("models:/qaflow-squad@champion")
    context = "Rollo was a Viking leader. His descendants ruled Normandy for centuries."
    answer = model.predict(pd.DataFrame({"question": ["Who ruled Normandy?"], "context": [context]})).iloc[0]
    assert answer["answer"] and answer["answer"] in context
    assert "qa model:   dev exact match" in render_summary(first)
    # The dev contexts were kept out of the pretraining corpus.
    assert any("squad/dev.json.gz::context" in spec for spec in first["corpus"]["config"]["decontamination_files"])


def test_second_run_is_compared_with_the_champion_on_the_same_dev_set(runs):
    _, first, second = runs
    comparison = second["comparison"]
    assert comparison["primary_metric"] == "f1"
    assert comparison["champion"] == pytest.approx(first["classifier"]["eval_f1"])  # the first model, re-scored
    assert comparison["candidate"] == pytest.approx(second["classifier"]["eval_f1"])
    reason = second["registered"]["classifier"]["reason"]
    assert "same evaluation set" in reason or reason == "already champion", reason
    assert "vs champion:" in render_summary(second)
