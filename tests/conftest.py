"""Shared fixtures. Tests are hermetic: offline, temporary Prefect/MLflow state, tiny models built in-process."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_STATE = Path(tempfile.mkdtemp(prefix="bertflow-tests-"))
# Set before prefect, mlflow or transformers are imported anywhere in the test session.
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_HOME": str(_STATE / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "BERTFLOW_HOME": str(_STATE / "bertflow"),
    # mixed_precision="auto" runs fp32 in every test process, whatever bf16 units the CI machine's CPU has, so that
    # the tests' numerics do not depend on it; and training processes share threads only among the tests' own.
    "BERTFLOW_MIXED_PRECISION": "no",
    "BERTFLOW_TRAINING_REGISTRY": str(_STATE / "training"),
    "BERTFLOW_HARDWARE_CACHE": str(_STATE / "hardware"),
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
})
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

from bert_core.examples.generation import ExamplesConfig, generate_examples  # noqa: E402
from bert_core.examples.tokenizer import TokenizerConfig  # noqa: E402
from bert_core.ingest.corpus import IngestConfig, ingest_corpus  # noqa: E402
from bert_core.training.pretrain import PretrainConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_EXAMPLES = ExamplesConfig(max_seq_length=64, examples_per_shard=1000, tokenizer=TokenizerConfig(vocab_size=2000))


@pytest.fixture(scope="session")
def documents_dir(tmp_path_factory) -> Path:
    """The bundled sample corpus, ingested once for the session."""
    return ingest_corpus(IngestConfig(validation_fraction=0.1), tmp_path_factory.mktemp("ingest") / "documents")


@pytest.fixture(scope="session")
def examples_dir(documents_dir, tmp_path_factory) -> Path:
    return generate_examples(TINY_EXAMPLES, documents_dir, tmp_path_factory.mktemp("examples") / "examples")


def tiny_pretrain_config(examples_dir: Path, output_dir: Path, **overrides) -> PretrainConfig:
    values = dict(shards_dir=str(examples_dir), output_dir=str(output_dir), preset="bert-tiny", max_seq_length=64,
                  per_device_train_batch_size=16, learning_rate=1e-3, num_warmup_steps=2, max_train_steps=30,
                  logging_steps=5, eval_steps=15, checkpointing_steps=15, seed=7)
    values.update(overrides)
    return PretrainConfig(**values)


@pytest.fixture(scope="session")
def pretrained(examples_dir, tmp_path_factory) -> dict:
    """A bert-tiny pretrained for 30 steps on the tiny shards (its training summary)."""
    from bert_core.training.pretrain import pretrain

    return pretrain(tiny_pretrain_config(examples_dir, tmp_path_factory.mktemp("pretrain") / "run"))


def run_pretrain_cli(config_path: Path, env: dict):
    """`python -m bert_core pretrain --config ...` as a real process (stdout dropped, stderr kept for errors)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "bert_core", "pretrain", "--config", str(config_path)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_after_checkpoint(config_path: Path, checkpoint: Path, env: dict) -> None:
    """Start pretraining, kill -9 it as soon as `checkpoint` exists, and check it died before its end."""
    import os
    import signal
    import time

    process = run_pretrain_cli(config_path, env)
    deadline = time.time() + 240
    while not checkpoint.is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoint.is_dir(), process.stderr.read() if process.poll() is not None else "no checkpoint in time"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (checkpoint.parents[1] / "final").exists()  # it really died before the end
