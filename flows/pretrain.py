"""Flow: pretrain BERT (MLM + NSP) on example shards with Accelerate, in a subprocess per device."""

from __future__ import annotations

from prefect import flow

from bert_core import stage
from bert_core.config import SEED, given
from bert_core.stage import default_work_dir
from bert_core.training.model import model_name
from bert_core.training.pretrain import PretrainConfig
from flows.parameters import PretrainParameters
from tasks.pretrain import pretrain as run_pretrain


@flow(name="pretrain")
def pretrain_flow(
    shards_dir: str,
    work_dir: str | None = None,
    pretrain: PretrainParameters | None = None,
    seed: int = SEED,
    mlflow_parent_run_id: str | None = None,
) -> dict:
    """Returns the training summary (final/ path, held-out metrics at step 0 and at the end, the MLflow run).

    Args:
        shards_dir: An examples-stage output (train/, validation/, tokenizer/).
        work_dir: Outputs go to `<work_dir>/pretrain/<model name>`; empty: `$BERTFLOW_HOME/work`.
        pretrain: The fields of `PretrainConfig` this run changes, e.g. {"preset": "bert-mini", "max_train_steps":
            2000}; the rest are the config's defaults.
        seed: Random seed.
        mlflow_parent_run_id: Nest the training run's MLflow run under this one.
    """
    values = given(pretrain)
    name = model_name(values.get("preset", PretrainConfig.preset), values.get("architecture", PretrainConfig.architecture))
    config = stage.config_from_dict(PretrainConfig, {
        **values, "shards_dir": shards_dir, "seed": seed,
        "output_dir": str(default_work_dir(work_dir) / "pretrain" / name)})
    return run_pretrain(config, mlflow_parent_run_id)
