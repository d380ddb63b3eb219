"""One home for a training run's precision: an Accelerate config file decides a launch's (its processes take it
from the environment `accelerate launch` sets), else the config's `mixed_precision`, "auto" resolved once per run
before the processes start; the run records what ran."""

import subprocess
from dataclasses import replace

import pytest
import yaml

from bert_core import stage
from bert_core.training import hardware
from bert_core.training.launch import launch_command, launch_config, launch_env
from bert_core.training.pretrain import stage_key
from tests.conftest import REPO, tiny_pretrain_config


def _one_process_file(tmp_path, precision: str):
    path = tmp_path / "one-process.yaml"
    path.write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "distributed_type": "NO",
                                    "num_machines": 1, "num_processes": 1, "mixed_precision": precision,
                                    "use_cpu": True}))
    return path


def test_the_accelerate_file_decides_the_launchs_precision_and_the_run_records_it(examples_dir, tmp_path):
    file = _one_process_file(tmp_path, "no")
    config = tiny_pretrain_config(examples_dir, tmp_path / "run", max_train_steps=4, eval_steps=4,
                                  checkpointing_steps=4, mixed_precision="bf16", accelerate_config_file=str(file))
    assert launch_config(config) == config  # the launcher leaves it to the file
    command = launch_command(tmp_path / "run.json", config)
    assert "--mixed_precision" not in command and command[command.index("--config_file") + 1] == str(file)
    stage.write_json(tmp_path / "run.json", config)
    env = {**launch_env(config), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = stage.read_json(tmp_path / "run" / "summary.json")
    assert summary["mixed_precision"] == "no"  # the file's, not the config's bf16
    # The stage key hashes what ran: the same as a run asked for "no" without a file.
    plain = replace(config, accelerate_config_file=None, mixed_precision="no")
    assert stage_key(config) == stage_key(plain) != stage_key(replace(plain, mixed_precision="bf16"))


def test_without_a_file_auto_is_resolved_once_before_the_processes_start(examples_dir, tmp_path, monkeypatch):
    config = tiny_pretrain_config(examples_dir, tmp_path / "run", mixed_precision="auto")
    monkeypatch.setenv("BERTFLOW_MIXED_PRECISION", "no")
    launched = launch_config(config)
    assert launched.mixed_precision == "no"
    command = launch_command(tmp_path / "run.json", launched)
    assert command[command.index("--mixed_precision") + 1] == "no"

    def no_second_decision():
        raise AssertionError("a launched process resolved 'auto' again")

    monkeypatch.setattr(hardware, "auto_precision", no_second_decision)
    assert hardware.accelerator_precision(launched) == "no"  # what the launched process hands its Accelerator
    with pytest.raises(AssertionError, match="again"):
        hardware.accelerator_precision(config)  # (the probe: a config still "auto" would decide here)


def test_a_launched_process_takes_the_files_precision_from_the_environment(tmp_path, monkeypatch, examples_dir):
    config = tiny_pretrain_config(examples_dir, tmp_path / "run", mixed_precision="bf16",
                                  accelerate_config_file=str(_one_process_file(tmp_path, "fp16")))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert hardware.accelerator_precision(config) is None  # Accelerate reads the environment itself
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert hardware.accelerator_precision(config) == "fp16"  # run without a launch: the file's
    assert hardware.run_precision(config) == "fp16"
