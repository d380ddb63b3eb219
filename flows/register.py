"""Flow: register the pretrained model and the fine-tuned classifier in MLflow, with lineage and the promotion gate."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from bert_core.downstream.kinds import PRETRAINED
from bert_core.metrics import scalar_metrics
from bert_core.registry.registration import RegisterConfig
from bert_core.training.model import pretrained_model_name
from tasks.registry import register_model


def encoder_registered_name(prefix: str, pretrained_dir: str) -> str:
    """The MLflow name of a pipeline's encoder: `<prefix>-<model name>`, e.g. bertflow-bert-tiny,
    bertflow-modernbert-tiny."""
    return f"{prefix}-{pretrained_model_name(pretrained_dir)}"


@flow(name="register")
def register_flow(
    pretrained_dir: str | None,
    pretrained_metrics: dict | None = None,
    classifier_dir: str | None = None,
    task_name: str = "sst2",
    classifier_metrics: dict | None = None,
    primary_metric: str = "eval_accuracy",
    champion_metrics: dict | None = None,
    lineage: dict | None = None,
    params: dict | None = None,
    pretrain_metrics_file: str | None = None,
    finetune_metrics_file: str | None = None,
    pretrained_artifacts: list[str] | None = None,
    classifier_artifacts: list[str] | None = None,
    registered_model_prefix: str = "bertflow",
    min_improvement: float = 0.0,
    pretrain_run_id: str | None = None,
    champion_version: str | None = None,
    parent_run_id: str | None = None,
    classifier_tags: dict | None = None,
    pretrained_champion_metrics: dict | None = None,
    pretrained_champion_version: str | None = None,
    parent_model_uri: str | None = None,
    pretrained_registered_name: str | None = None,
    pretrained_gate_evidence: dict | None = None,
) -> dict:
    """Returns {"pretrained": version info or None, "classifier": version info or None}.

    The task model (`classifier_dir`; its directory says its kind and input) becomes champion when its `primary_metric` beats the current
    champion's; `champion_metrics` are the champion's figures on the same dev set (from the evaluate flow), which
    the gate prefers to the ones the champion was registered with while `champion_version` is still the champion.
    New MLflow runs nest under `parent_run_id` (the pipeline's run).

    The encoder's gate: with a downstream suite (`suite_score` among `pretrained_metrics`), the suite score against
    the champion's on the same suite (`pretrained_champion_metrics`), with `pretrained_gate_evidence` (the paired
    p-value) kept on the version; without one, held-out MLM loss, compared only with a champion of the same
    tokenizer.
    """
    tags = {**(lineage or {}), "prefect.flow_run_id": str(flow_run.get_parent_flow_run_id() or flow_run.get_id())}
    pretrained = None if pretrained_dir is None else register_model(RegisterConfig(
        model_dir=pretrained_dir,
        registered_model_name=(pretrained_registered_name
                               or encoder_registered_name(registered_model_prefix, pretrained_dir)),
        kind=PRETRAINED,
        run_name=f"pretrain-{pretrained_model_name(pretrained_dir)}",
        **(dict(primary_metric="suite_score", greater_is_better=True) if "suite_score" in (pretrained_metrics or {})
           else dict(primary_metric="eval_mlm_loss", greater_is_better=False,
                     comparable_on=("bertflow.tokenizer_sha256",))),
        gate_evidence=pretrained_gate_evidence or {},
        min_improvement=min_improvement,
        metrics=scalar_metrics(pretrained_metrics or {}),
        champion_metrics=pretrained_champion_metrics,
        champion_version=pretrained_champion_version,
        params=(params or {}).get("pretrain", {}),
        tags=tags,
        artifacts=tuple(pretrained_artifacts or ()),
        metrics_history=pretrain_metrics_file,
        run_id=pretrain_run_id,
        parent_run_id=parent_run_id,
    ))
    classifier = None
    if classifier_dir:
        classifier = register_model(RegisterConfig(
            model_dir=classifier_dir,
            registered_model_name=f"{registered_model_prefix}-{task_name}",
            run_name=f"finetune-{task_name}",
            task=task_name,
            primary_metric=primary_metric,
            champion_metrics=champion_metrics,
            champion_version=champion_version,
            parent_run_id=parent_run_id,
            greater_is_better=True,
            min_improvement=min_improvement,
            metrics=scalar_metrics(classifier_metrics or {}),
            params=(params or {}).get("finetune", {}),
            tags={**tags, **(classifier_tags or {}),
                  "bertflow.parent_model": parent_model_uri or (pretrained or {}).get("model_uri", "")},
            artifacts=tuple(classifier_artifacts or ()),
            metrics_history=finetune_metrics_file,
        ))
    return {"pretrained": pretrained, "classifier": classifier}
