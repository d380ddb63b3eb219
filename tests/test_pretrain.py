import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining

from bert_core import stage
from bert_core.pretrain import launch_command, pretrain
from tests.conftest import REPO, tiny_pretrain_config


def test_loss_goes_down_and_final_loads_with_vanilla_transformers(pretrained):
    assert pretrained["eval_mlm_loss"] < pretrained["initial_eval_mlm_loss"] - 0.5
    model = AutoModelForPreTraining.from_pretrained(pretrained["final_dir"])
    assert type(model).__name__ == "BertForPreTraining"
    history = [json.loads(l) for l in (Path(pretrained["final_dir"]).parent / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in history if "loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert train[-1]["mlm_loss"] < train[0]["mlm_loss"]
    assert {"mlm_accuracy", "nsp_accuracy", "learning_rate", "grad_norm", "tokens_per_second"} <= set(train[0])


def test_rerun_is_skipped(pretrained, examples_dir):
    out = Path(pretrained["final_dir"]).parent
    before = (out / "stage.json").stat().st_mtime_ns
    again = pretrain(tiny_pretrain_config(examples_dir, out))
    assert again == pretrained and (out / "stage.json").stat().st_mtime_ns == before


def test_max_seq_length_must_match_the_shards(examples_dir, tmp_path):
    with pytest.raises(ValueError, match="max_seq_length=128"):
        pretrain(tiny_pretrain_config(examples_dir, tmp_path / "x", max_seq_length=128))


def _weights(final_dir):
    return load_file(str(Path(final_dir) / "model.safetensors"))


def _run_cli(config_path, env):
    return subprocess.Popen([sys.executable, "-m", "bert_core", "pretrain", "--config", str(config_path)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_kill_and_resume_gives_the_same_weights_as_an_uninterrupted_run(examples_dir, tmp_path):
    """kill -9 a real training process after a checkpoint, rerun it, and compare with a run that was never killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    common = dict(max_train_steps=24, checkpointing_steps=6, eval_steps=12, logging_steps=3, learning_rate=5e-4)
    straight = tiny_pretrain_config(examples_dir, tmp_path / "straight", **common)
    resumed = tiny_pretrain_config(examples_dir, tmp_path / "resumed", **common)
    for config in (straight, resumed):
        stage.write_json(tmp_path / f"{Path(config.output_dir).name}.json", config)

    process = _run_cli(tmp_path / "resumed.json", env)
    checkpoint = tmp_path / "resumed" / "checkpoints" / "step-0000012"
    deadline = time.time() + 240
    while not checkpoint.is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoint.is_dir(), process.stderr.read() if process.poll() is not None else "no checkpoint in time"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "resumed" / "final").exists()  # it really died before the end

    assert _run_cli(tmp_path / "resumed.json", env).wait() == 0
    assert _run_cli(tmp_path / "straight.json", env).wait() == 0
    a, b = _weights(tmp_path / "straight" / "final"), _weights(tmp_path / "resumed" / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit-equal in fp32 on one process
    steps = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(l)]
    assert steps == list(range(3, 25, 3))  # the resumed log has every step once


def test_launch_command_uses_accelerate(tmp_path, examples_dir):
    one = launch_command(tmp_path / "c.json", tiny_pretrain_config(examples_dir, tmp_path))
    assert one[1:3] == ["-m", "accelerate.commands.launch"]
    assert one[one.index("--num_processes") + 1] == "1" and "--multi_gpu" not in one
    assert ["-m", "bert_core", "pretrain", "--config", str(tmp_path / "c.json")] == one[-5:]
    two = launch_command(tmp_path / "c.json", tiny_pretrain_config(examples_dir, tmp_path, num_processes=2))
    assert "--multi_gpu" in two and two[two.index("--num_processes") + 1] == "2"
