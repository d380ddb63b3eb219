"""Prefect task for pretraining: writes the config JSON and runs `accelerate launch -m bert_core pretrain`.

Training runs in a subprocess (one process per device) rather than inside the task, because Accelerate's
launchers must own their processes (`bert_core.training.launch.run_launch` supervises them); its log lines are
streamed into the task's log and its progress (`checkpoints.MetricsProgress`) into a Prefect progress artifact.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from bert_core import stage, tracking
from bert_core.training import launch
from bert_core.training import pretrain as pretrain_lib
from bert_core.training.checkpoints import MetricsProgress
from bert_core.training.model import model_name
from tasks import TRAINING_TAG


class TrainingProcessFailed(RuntimeError):
    """A launched training process exited with an error: a lost rank or machine, a killed process. The task retries
    once; the rerun resumes from the last complete checkpoint (a torn one is never resumed from)."""


def _lost_process(task, task_run, state) -> bool:  # noqa: ARG001 (Prefect's retry_condition_fn signature)
    """Retry a failed launch, not a run that never started (bad config or shards: the same error again)."""
    try:
        state.result()
    except TrainingProcessFailed:
        return True
    except BaseException:
        return False
    return False


@task(name="pretrain", cache_policy=NO_CACHE, tags=[TRAINING_TAG], retries=1, retry_condition_fn=_lost_process)
def pretrain(config: pretrain_lib.PretrainConfig, mlflow_parent_run_id: str | None = None) -> dict:
    """Run (or resume, or skip when up to date) pretraining; its MLflow run nests under `mlflow_parent_run_id`."""
    logger = get_run_logger()
    config = pretrain_lib.with_shard_settings(config)  # the run's MLflow params show the masking actually used
    output_dir = Path(config.output_dir)
    if stage.completed_stage(output_dir, pretrain_lib.stage_key(config)):
        logger.info("pretrain: %s is up to date, skipping", output_dir)
        run_file = output_dir / "mlflow_run.json"
        run_id = stage.read_json(run_file)["run_id"] if run_file.is_file() else None
        return {**stage.read_json(output_dir / "summary.json"), "mlflow_run_id": run_id, "reused": True}
    # Training logs its metrics to an MLflow run as it goes; a resumed run continues the same MLflow run.
    run_file = output_dir / "mlflow_run.json"
    key = pretrain_lib.stage_key(config)
    record = stage.read_json(run_file) if run_file.is_file() else {}
    # A resumed run goes on logging into its own MLflow run; a run of another config gets a new one.
    run_id = record.get("run_id") if record.get("key") == key else None
    if run_id is None or not tracking.run_exists(run_id):
        run_id = tracking.start_run("bertflow", f"pretrain-{model_name(config.preset, config.architecture)}",
                                    params={k: v for k, v in stage.to_jsonable(config).items() if k != "mlflow_run_id"},
                                    parent_run_id=mlflow_parent_run_id, tags={"bertflow.stage": "pretrain"})
        stage.write_json(run_file, {"run_id": run_id, "key": key})
    config = launch.launch_config(replace(config, mlflow_run_id=run_id))
    config_path = output_dir / "pretrain_config.json"
    stage.write_json(config_path, config)
    command = launch.launch_command(config_path, config)
    env = launch.launch_env(config)
    env["TQDM_DISABLE"] = "1"  # progress goes to the artifact below; keep the logs readable
    logger.info("launching: %s", " ".join(command))
    progress_id = create_progress_artifact(progress=0.0, key="pretrain-progress", description="Pretraining steps")
    progress = MetricsProgress(output_dir / "metrics.jsonl", config.max_train_steps)  # a budget's plan: from the records
    tail: deque[str] = deque(maxlen=40)

    def on_line(line: str) -> None:
        tail.append(line)
        logger.info(line)
        percent = progress.percent()
        if percent is not None:
            update_progress_artifact(progress_id, progress=percent, description=progress.description())

    returncode = launch.run_launch(command, env, on_line, saved=lambda: stage.completed_stage(output_dir, key), log=logger)
    if returncode != 0:
        raise TrainingProcessFailed(f"pretraining exited with code {returncode}; last lines:\n" + "\n".join(tail))
    summary_path = output_dir / "summary.json"
    if not summary_path.is_file():
        raise RuntimeError(f"pretraining stopped before the end (interrupted?); no {summary_path}")
    update_progress_artifact(progress_id, progress=100.0)
    summary = stage.read_json(summary_path)
    tracking.tag_run(run_id, {tracking.PRECISION_TAG: summary["mixed_precision"]})  # what "auto" ran in here
    return {**summary, "mlflow_run_id": run_id, "reused": False}
