"""Two machines, for real: a 2-machine Accelerate launch on this one machine, the way an operator runs
deployments/accelerate/multi-node.yaml on two hosts (the same launch on each, machine_rank 0 and 1, static
rendezvous at main_process_ip), here with one gloo process per "machine" on 127.0.0.1."""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bert_core import stage
from bert_core.training.launch import FAULT_ENV, launch_command, launch_env
from tests.conftest import REPO, tiny_pretrain_config

COMMON = dict(max_train_steps=12, logging_steps=1, eval_steps=100, checkpointing_steps=6, learning_rate=5e-4,
              per_device_train_batch_size=8, mixed_precision="no")


def two_machine_file(tmp_path: Path, port: int) -> Path:
    """multi-node.yaml with this machine's address for both machines and one process on each."""
    settings = yaml.safe_load((REPO / "deployments" / "accelerate" / "multi-node.yaml").read_text())
    assert settings["num_machines"] == 2 and settings["rdzv_backend"] == "static"
    settings.update(num_processes=2, main_process_ip="127.0.0.1", main_process_port=port, mixed_precision="no")
    path = tmp_path / "two-machines.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def launch(config, config_path: Path, **env) -> subprocess.Popen:
    """This machine's part of a launch (`launch_command`, `launch_env`: what the Prefect pretrain task runs)."""
    env = {**launch_env(config), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(launch_command(config_path, config), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def two_machines(config, config_path: Path, **env) -> list[tuple[int, str]]:
    """Both machines' launches, started together; (exit code, output) of each."""
    stage.write_json(config_path, config)
    machines = [launch(replace(config, machine_rank=rank), config_path, **env) for rank in (0, 1)]
    logs = [machine.communicate(timeout=600)[0] for machine in machines]
    return [(machine.returncode, log) for machine, log in zip(machines, logs)]


@pytest.fixture(scope="module")
def nodes_run(examples_dir, tmp_path_factory) -> Path:
    """An uninterrupted 2-machine run."""
    tmp_path = tmp_path_factory.mktemp("two-machines")
    nodes = tiny_pretrain_config(examples_dir, tmp_path / "nodes", **COMMON,
                                 accelerate_config_file=str(two_machine_file(tmp_path, 29541)))
    for rank, (code, log) in enumerate(two_machines(nodes, tmp_path / "nodes.json")):
        assert code == 0, f"machine {rank}:\n{log[-3000:]}"
    return tmp_path / "nodes"


def test_two_machines_end_like_one_machine_with_two_processes(examples_dir, nodes_run, tmp_path):
    ranks = stage.read_json(nodes_run / "ranks.json")
    assert ranks["world_size"] == 2 and ranks["identical_weights"], ranks
    assert ranks["overlapping_examples"] == 0 and all(r["examples_checked"] == 12 * 8 for r in ranks["ranks"])

    one = tiny_pretrain_config(examples_dir, tmp_path / "one", **COMMON, num_processes=2, main_process_port=29543)
    stage.write_json(tmp_path / "one.json", one)
    single = launch(one, tmp_path / "one.json")
    log = single.communicate(timeout=600)[0]
    assert single.returncode == 0, log[-3000:]
    assert_same_weights(nodes_run, tmp_path / "one")  # the same ranks, batches and all-reduce; another topology


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = weights(a_dir), weights(b_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_lost_machine_fails_the_job_within_a_minute_and_the_rerun_resumes_bit_equal(examples_dir, nodes_run,
                                                                                        tmp_path):
    """kill -9 machine 1's only process after step 9 (checkpoints at 6 and 12): both launches exit with an error
    within 60 s instead of waiting on the lost peer, and the same launch again resumes from step 6 and ends with
    the uninterrupted run's weights."""
    lost = tiny_pretrain_config(examples_dir, tmp_path / "lost", **COMMON,
                                accelerate_config_file=str(two_machine_file(tmp_path, 29545)))
    marker = tmp_path / "killed"
    results = two_machines(lost, tmp_path / "lost.json", **{FAULT_ENV: f"1:step-9:{marker}"})
    ended = time.time()
    assert marker.is_file(), results
    assert all(code != 0 for code, _ in results), [log[-2000:] for _, log in results]
    assert ended - float(marker.read_text()) < 60
    checkpoints = sorted(p.name for p in (tmp_path / "lost" / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-0000006"] and not (tmp_path / "lost" / "final").exists()

    rerun = two_machines(lost, tmp_path / "lost.json", **{FAULT_ENV: f"1:step-9:{marker}"})  # the marker: no second kill
    for rank, (code, log) in enumerate(rerun):
        assert code == 0, f"machine {rank}:\n{log[-3000:]}"
        if rank == 0:
            assert "step-0000006 at step 6" in log, log[-3000:]  # resumed from the last complete checkpoint
    assert_same_weights(nodes_run, tmp_path / "lost")


@pytest.mark.parametrize("point, rank", [("checkpoint-8-created", 1), ("checkpoint-8-saved", 1),
                                         ("checkpoint-8-stamped", 0)])
def test_a_process_killed_while_a_checkpoint_is_written_never_resumes_from_it(examples_dir, nodes_run, tmp_path,
                                                                              point, rank):
    """kill -9 one rank of a 2-process launch inside the step-8 checkpoint's write (after the directory is made,
    after its state is saved, after the main process stamped it, just before the rename): the rerun resumes from
    step 4's checkpoint, never from the torn one, and ends with the uninterrupted run's weights."""
    config = tiny_pretrain_config(examples_dir, tmp_path / "torn", **{**COMMON, "checkpointing_steps": 4},
                                  num_processes=2, main_process_port=29547)
    stage.write_json(tmp_path / "torn.json", config)
    marker = tmp_path / "killed"
    first = launch(config, tmp_path / "torn.json", **{FAULT_ENV: f"{rank}:{point}:{marker}"})
    log = first.communicate(timeout=600)[0]
    assert marker.is_file() and first.returncode != 0, log[-3000:]
    assert sorted(p.name for p in (tmp_path / "torn" / "checkpoints").glob("step-*")) == ["step-0000004"]
    again = launch(config, tmp_path / "torn.json", **{FAULT_ENV: f"{rank}:{point}:{marker}"})
    log = again.communicate(timeout=600)[0]
    assert again.returncode == 0 and "step-0000004 at step 4" in log, log[-3000:]
    assert_same_weights(nodes_run, tmp_path / "torn")
