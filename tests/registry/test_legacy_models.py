"""A champion registered before the library moved into packages (commit ac9fe06, `tests/data/legacy_registry`) still
loads and predicts what it predicted then, in a fresh process, and is the promotion gate's reference for candidates
registered by today's code, which load and predict beside it."""

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bert_core.registry.registration import CANDIDATE, CHAMPION, RegisterConfig, alias_version, register_model
from bert_core.training.model import model_description, resolve_model
from tests.conftest import REPO

LEGACY = REPO / "tests" / "data" / "legacy_registry"
MADE_AT = "/tmp/bertflow-legacy-store"  # where make_store.py.txt built the store


@pytest.fixture()
def legacy_home(tmp_path) -> Path:
    """A copy of the old store whose recorded locations point at the copy."""
    home = tmp_path / "home"
    shutil.copytree(LEGACY, home)
    with sqlite3.connect(home / "mlflow.db") as db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location"), ("model_versions", "storage_location")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (MADE_AT, str(home)))
    return home


def _predict_in_fresh_process(home: Path, uri: str, texts: list[str]) -> list[dict]:
    script = textwrap.dedent(f"""
        import json, mlflow
        mlflow.set_tracking_uri("sqlite:///{home / 'mlflow.db'}")
        out = mlflow.pyfunc.load_model({uri!r}).predict({texts!r})
        print(json.dumps(out.to_dict(orient="records")))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=home, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_champion_registered_before_the_move_loads_predicts_and_gates(legacy_home, tmp_path, monkeypatch):
    expected = json.loads((LEGACY / "expected.json").read_text())
    uri = f"models:/legacy-sst2@{CHAMPION}"
    assert alias_version(uri, home=legacy_home) == "1"

    # It predicts in a fresh process what it predicted when it was registered (its own pyfunc code, logged then).
    served = _predict_in_fresh_process(legacy_home, uri, expected["examples"])
    assert [row["label"] for row in served] == [row["label"] for row in expected["predictions"]]
    assert [row["score"] for row in served] == pytest.approx([row["score"] for row in expected["predictions"]],
                                                             abs=1e-5)

    # Today's library finds its weights and reads its description through the registry.
    monkeypatch.setenv("BERTFLOW_HOME", str(legacy_home))  # the store models:/ URIs resolve in
    old_dir = Path(resolve_model(uri))
    assert (old_dir / "config.json").is_file() and model_description(old_dir)["kind"] == "classifier"

    # Candidates registered now are gated against it: a worse one stays candidate, a better one takes champion.
    base = dict(registered_model_name="legacy-sst2", home=str(legacy_home), primary_metric="eval_accuracy",
                task="sst2")
    old_accuracy = expected["eval_accuracy"]
    worse_dir, better_dir = tmp_path / "worse", tmp_path / "better"
    for directory, marker in ((worse_dir, "worse"), (better_dir, "better")):
        shutil.copytree(old_dir, directory)
        (directory / "marker.txt").write_text(marker)  # another model hash: a new version, not the old one again
    worse = register_model(RegisterConfig(model_dir=str(worse_dir), metrics={"eval_accuracy": old_accuracy - 0.1},
                                          **base))
    assert worse["version"] == "2" and worse["aliases"] == [CANDIDATE] and not worse["promoted"]
    assert f"does not beat champion v1 ({old_accuracy:.4f}, as registered)" in worse["reason"]  # the old figure
    assert alias_version(uri, home=legacy_home) == "1"
    better = register_model(RegisterConfig(model_dir=str(better_dir), metrics={"eval_accuracy": old_accuracy + 0.1},
                                           **base))
    assert better["version"] == "3" and better["promoted"] and CHAMPION in better["aliases"]
    assert f"beats champion v1 ({old_accuracy:.4f}" in better["reason"]
    assert alias_version(uri, home=legacy_home) == "3"

    # The new champion (today's pyfunc code, told its kind and window by registration) predicts as the old one did:
    # the same weights.
    new = _predict_in_fresh_process(legacy_home, uri, expected["examples"])
    assert [row["label"] for row in new] == [row["label"] for row in expected["predictions"]]
    assert [row["score"] for row in new] == pytest.approx([row["score"] for row in expected["predictions"]], abs=1e-5)
