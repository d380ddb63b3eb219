import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining

from bert_core import stage
from bert_core.examples.generation import generate_examples
from bert_core.examples.shards import ShardDataset
from bert_core.training import budget
from bert_core.training.launch import end_training, launch_command, launch_env
from bert_core.training.pretrain import pretrain
from tests.conftest import REPO, kill_after_checkpoint, run_pretrain_cli, tiny_pretrain_config


def test_loss_goes_down_and_final_loads_with_vanilla_transformers(pretrained):
    assert pretrained["eval_mlm_loss"] < pretrained["initial_eval_mlm_loss"] - 0.5
    assert pretrained["mixed_precision"] == "no"  # "auto" (the default), pinned to fp32 in the tests
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


def test_kill_and_resume_gives_the_same_weights_as_an_uninterrupted_run(examples_dir, tmp_path):
    """kill -9 a real training process after a checkpoint, rerun it, and compare with a run that was never killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # A token budget that the 24th step reaches: the resumed run must end on the step the uninterrupted one does.
    tokens = budget.tokens_through(24, ShardDataset(examples_dir / "train").lengths, 16, seed=7, world_size=1,
                                   gradient_accumulation_steps=1, length_binning=True)
    common = dict(max_train_tokens=tokens, max_train_steps=10_000, checkpointing_steps=6, eval_steps=12,
                  logging_steps=3, learning_rate=5e-4)
    straight = tiny_pretrain_config(examples_dir, tmp_path / "straight", **common)
    resumed = tiny_pretrain_config(examples_dir, tmp_path / "resumed", **common)
    for config in (straight, resumed):
        stage.write_json(tmp_path / f"{Path(config.output_dir).name}.json", config)

    kill_after_checkpoint(tmp_path / "resumed.json", tmp_path / "resumed" / "checkpoints" / "step-0000012", env)

    assert run_pretrain_cli(tmp_path / "resumed.json", env).wait() == 0
    assert run_pretrain_cli(tmp_path / "straight.json", env).wait() == 0
    a, b = _weights(tmp_path / "straight" / "final"), _weights(tmp_path / "resumed" / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit-equal in fp32 on one process
    steps = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(l)]
    assert steps == list(range(3, 25, 3))  # the resumed log has every step once
    assert stage.read_json(tmp_path / "resumed" / "summary.json")["train_tokens"] == tokens


def test_launch_command_uses_accelerate(tmp_path, examples_dir):
    one = launch_command(tmp_path / "c.json", tiny_pretrain_config(examples_dir, tmp_path))
    assert one[1:3] == ["-m", "accelerate.commands.launch"]
    assert one[one.index("--num_processes") + 1] == "1" and "--multi_gpu" not in one
    assert ["-m", "bert_core", "pretrain", "--config", str(tmp_path / "c.json")] == one[-5:]
    two = launch_command(tmp_path / "c.json", tiny_pretrain_config(examples_dir, tmp_path, num_processes=2))
    assert "--multi_gpu" in two and two[two.index("--num_processes") + 1] == "2"


def _train_losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def test_two_processes_on_gloo_match_one_process(examples_dir, tmp_path):
    """accelerate launch with 2 CPU processes: identical weights on both ranks, disjoint examples, and the loss
    trajectory of one process with the same global batch (16) within 2%."""
    common = dict(max_train_steps=12, logging_steps=1, eval_steps=100, checkpointing_steps=100, learning_rate=5e-4,
                  main_process_port=29517)
    two = tiny_pretrain_config(examples_dir, tmp_path / "two", per_device_train_batch_size=8, num_processes=2, **common)
    one = tiny_pretrain_config(examples_dir, tmp_path / "one", per_device_train_batch_size=16, **common)
    for name, config in (("two", two), ("one", one)):
        path = tmp_path / f"{name}.json"
        stage.write_json(path, config)
        env = {**launch_env(config), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(launch_command(path, config), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    ranks = stage.read_json(tmp_path / "two" / "ranks.json")
    assert ranks["world_size"] == 2 and ranks["identical_weights"], ranks
    assert ranks["overlapping_examples"] == 0 and all(r["examples_checked"] == 12 * 8 for r in ranks["ranks"])
    a, b = _train_losses(tmp_path / "two"), _train_losses(tmp_path / "one")
    assert list(a) == list(b) == list(range(1, 13))
    # Not bit-equal: each rank averages the MLM loss over its own masked tokens before DDP averages the two.
    worst = max(abs(a[s] - b[s]) / b[s] for s in a)
    assert worst < 0.02, (worst, a, b)


def test_lamb_bf16_and_live_mlflow_metrics(examples_dir, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from bert_core.tracking import configure_tracking, ensure_experiment

    configure_tracking(tmp_path / "home")
    run = MlflowClient().create_run(ensure_experiment("bertflow-test", tmp_path / "home"))
    summary = pretrain(tiny_pretrain_config(
        examples_dir, tmp_path / "lamb", optimizer="lamb", learning_rate=2e-2, mixed_precision="bf16",
        lr_scheduler_type="polynomial", polynomial_power=0.5, max_train_steps=20, logging_steps=5, eval_steps=10,
        mlflow_run_id=run.info.run_id))
    assert summary["eval_mlm_loss"] < summary["initial_eval_mlm_loss"] - 0.3
    history = MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [5, 10, 15, 20]
    assert {"mlm_accuracy", "learning_rate", "tokens_per_second", "padding_share", "loader_share",
            "eval_mlm_loss"} <= set(MlflowClient().get_run(run.info.run_id).data.metrics)
    lrs = [m.value for m in MlflowClient().get_metric_history(run.info.run_id, "learning_rate")]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]  # polynomial decay after the warmup
    assert mlflow.get_tracking_uri().startswith("sqlite:")


def test_phase_two_starts_from_phase_one(pretrained, documents_dir, tmp_path):
    """A 256-token phase initialised from the 64-token phase's final weights (the BERT paper's two phases)."""
    from dataclasses import replace

    from bert_core.examples.masking import MaskingConfig
    from tests.conftest import TINY_EXAMPLES

    long = generate_examples(replace(TINY_EXAMPLES, max_seq_length=256, mlm=MaskingConfig(max_predictions_per_seq=40)),
                             documents_dir, tmp_path / "examples-256")
    phase2 = pretrain(tiny_pretrain_config(long, tmp_path / "phase2", max_seq_length=256, max_train_steps=5,
                                           eval_steps=100, init_from=pretrained["final_dir"]))
    # It starts where phase 1 ended, far below a fresh model's loss.
    assert phase2["initial_eval_mlm_loss"] < pretrained["initial_eval_mlm_loss"] - 0.5


def test_accelerate_config_files_load_and_launch(tmp_path, examples_dir):
    from accelerate.commands.config.config_args import load_config_from_file

    for name, machines, processes in (("multi-gpu", 1, 8), ("multi-node", 2, 16)):
        path = REPO / "deployments" / "accelerate" / f"{name}.yaml"
        cluster = load_config_from_file(str(path))
        assert (cluster.num_machines, cluster.num_processes, str(cluster.mixed_precision)) == (machines, processes, "bf16")
        cmd = launch_command(tmp_path / "c.json", tiny_pretrain_config(examples_dir, tmp_path, accelerate_config_file=str(path),
                                                                       machine_rank=1))
        assert cmd[cmd.index("--config_file") + 1] == str(path) and cmd[cmd.index("--machine_rank") + 1] == "1"
        assert "--num_processes" not in cmd  # the file decides


def test_a_rank_whose_teardown_hangs_prints_its_stacks_and_exits_0():
    """A process group that never shuts down (a PyTorch distributed-runtime hang after the outputs are saved, seen
    once in CI) must not hold the launcher: the rank logs every thread's stack and exits 0 after the timeout."""
    script = ("import logging, time\n"
              "from bert_core.training import launch\n"
              "logging.basicConfig(level='INFO')\n"
              "class Stuck:\n"
              "    num_processes, process_index = 2, 1\n"
              "    def end_training(self):\n"
              "        time.sleep(3600)\n"
              "launch.end_training(Stuck(), seconds=1.0)\n"
              "raise SystemExit(3)  # not reached: the watchdog ends the process\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    assert "rank 1: the process group did not shut down within 1 s" in done.stderr
    assert "in end_training" in done.stderr and "Thread" in done.stderr  # faulthandler's stack of every thread


def test_a_teardown_that_ends_in_time_returns_normally():
    class Quick:
        num_processes, process_index, ended = 2, 0, False

        def end_training(self):
            self.ended = True

    accelerator = Quick()
    end_training(accelerator, seconds=0.5)
    time.sleep(1.0)  # the cancelled watchdog must not fire (it would exit this pytest process)
    assert accelerator.ended


def _masked_shares(run_dir):
    return [r["masked_share"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if "masked_share" in r]


def test_dynamic_masking_trains_on_the_examples_stage_masking(documents_dir, tmp_path, pretrained):
    """Masking has one home, the examples stage: dynamic shards written at mlm_probability=0.3 are masked ~30% in
    every training batch, the run records 0.3, and a pretrain config that says otherwise is refused."""
    from dataclasses import replace

    from bert_core.examples.masking import MaskingConfig
    from tests.conftest import TINY_EXAMPLES

    shards = generate_examples(replace(TINY_EXAMPLES, masking="dynamic", mlm=MaskingConfig(mlm_probability=0.3)),
                               documents_dir, tmp_path / "dynamic")
    summary = pretrain(tiny_pretrain_config(shards, tmp_path / "run", max_seq_length=None, max_train_steps=6,
                                            logging_steps=1, eval_steps=100))
    shares = _masked_shares(tmp_path / "run")
    assert len(shares) == 6 and all(abs(s - 0.3) < 0.02 for s in shares), shares
    record = stage.read_json(tmp_path / "run" / "stage.json")["config"]
    assert record["mlm"]["mlm_probability"] == 0.3 and record["max_seq_length"] == 64  # the values used
    assert summary["steps"] == 6
    # The static shards of the session: masked at the default 15% when they were written.
    assert all(abs(s - 0.15) < 0.02 for s in _masked_shares(Path(pretrained["final_dir"]).parent))
    with pytest.raises(ValueError, match="contradicts the masking the shards .* were written for"):
        pretrain(tiny_pretrain_config(shards, tmp_path / "other", mlm=MaskingConfig(mlm_probability=0.15)))


def test_pretraining_progress_is_read_from_the_metrics_records(tmp_path):
    """The Prefect task's progress bar follows metrics.jsonl (JSON records), not the wording of a log line; a line
    being written is read when complete, and a resumed run that rewrote the file is followed from its start."""
    from bert_core.training.checkpoints import MetricsProgress

    path = tmp_path / "metrics.jsonl"
    progress = MetricsProgress(path, total_steps=20)
    assert progress.percent() is None  # no file yet
    path.write_text('{"step": 0, "eval_mlm_loss": 9.0}\n{"step": 5, "loss": 8.0}\n{"step": 1')
    assert progress.percent() == 25.0 and progress.percent() is None  # nothing new; the cut line waits
    with open(path, "a") as f:
        f.write('0, "loss": 7.5}\n')
    assert progress.percent() == 50.0
    path.write_text('{"step": 15, "loss": 7.0}\n')  # shorter: rewritten by a resume
    assert progress.percent() == 75.0
    # A budgeted run's records carry its planned length and ETA: the bar and its description follow them.
    with open(path, "a") as f:
        f.write('{"step": 20, "loss": 6.9, "planned_steps": 40, "eta_seconds": 90.0}\n')
    assert progress.percent() == 50.0
    assert progress.description() == "Pretraining: step 20 of 40, about 1.5 min left"
