"""A pipeline run's summary in words: what each stage read, wrote and measured, what was registered and promoted,
and where to look next (the MLflow and Prefect pages, a prediction from the champion). `bert-pipeline` prints it
and makes it a Prefect artifact; `python -m bert_core summary --summary-json FILE` prints a saved one."""

from __future__ import annotations

from bert_core.downstream.kinds import DEFAULT_MODEL_KIND, PRETRAINED, model_kind
from bert_core.downstream.suite import summary_line
from bert_core.registry.signatures import example_source
from bert_core.tracking import configure_tracking, redact


def pipeline_summary(*, work_dir: str, flow_run_id: str, mlflow_run_id: str, stages: dict, evaluation: dict,
                     task: dict, registered: dict, suite_gate: dict | None, seconds: float) -> dict:
    """What a bert-pipeline run returns and prints: the data stages' manifests, the evaluation's figures (each
    model's gate metrics), the task, the registered versions and the suite."""
    classifier = evaluation["classifier"]
    return {"work_dir": work_dir, "flow_run_id": flow_run_id, "mlflow_run_id": mlflow_run_id,
            "tracking_uri": redact(configure_tracking()), "corpus": stages["corpus"], "examples": stages["examples"],
            "pretrained": dict(evaluation["pretrained"].metrics), "classifier": dict(classifier.metrics) if classifier
            else {}, "task": task, "comparison": evaluation["comparison"], "registered": registered,
            "suite": suite_gate and {"report": suite_gate["report"], "champion_version": suite_gate["champion_version"],
                                     "vs_champion": suite_gate.get("comparison")},
            "seconds": seconds}


def models_table(summary: dict) -> list[dict]:
    """One row per registered model: its version, aliases, the metric its gate compared and the decision."""
    rows, encoder = [], summary["pretrained"]
    for info, metrics, metric in (
            (summary["registered"]["pretrained"], encoder, "suite_score" if "suite_score" in encoder else "eval_mlm_loss"),
            (summary["registered"]["classifier"], summary["classifier"], summary.get("task", {}).get("primary_metric"))):
        if not info:
            continue
        rows.append({"model": info["name"], "version": info["version"], "aliases": ", ".join(info["aliases"]),
                     "metric": metric, "value": round(float(metrics.get(metric, float("nan"))), 4),
                     "promoted": info["promoted"], "reason": info["reason"]})
    return rows


def render_summary(summary: dict, *, markdown: bool = False) -> str:
    """The summary as the lines `python -m flows.pipeline` prints (`markdown`: a fenced block and links)."""
    corpus, train, validation = summary["corpus"], summary["examples"]["train"], summary["examples"]["validation"]
    pre, reg = summary["pretrained"], summary["registered"]
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(corpus["documents_rejected"].items())) or "none"
    quality = train["quality"]
    share = quality.get("nsp_random_next_share")  # None: MLM only, no sentence pairs (the recipes' pair_objective)
    pair_task = None if share is None else "SOP" if train.get("config", {}).get("pair_objective") == "sop" else "NSP"
    objective = "MLM only, no sentence pairs" if share is None else (
        f"{'SOP swapped' if pair_task == 'SOP' else 'NSP random-next'} {share:.1%}")
    models = [reg["pretrained"]] + ([reg["classifier"]] if reg.get("classifier") else [])
    uri = summary["tracking_uri"]
    task = summary.get("task", {})
    kind, pairs = (task.get("kind", DEFAULT_MODEL_KIND), task.get("pairs", False)) if reg.get("classifier") else (PRETRAINED, False)
    clf_name = reg["classifier"]["name"] if reg.get("classifier") else reg["pretrained"]["name"]
    lines = [
        f"bert-pipeline finished in {summary['seconds']:.0f} s; outputs under {summary['work_dir']}",
        f"corpus:     {corpus['documents_read']} documents read, {corpus['documents_kept']} kept "
        f"(rejected: {rejected}); {corpus['sentences']:,} sentences",
        f"examples:   train {train['num_examples']:,} ({train['num_tokens']:,} tokens, {train['num_shards']} shards), "
        f"validation {validation['num_examples']:,}; {objective}, {_masking_phrase(train, validation)}",
        f"pretrained: held-out MLM loss {pre['initial_eval_mlm_loss']:.3f} -> {pre['eval_mlm_loss']:.3f} "
        f"(MLM accuracy {pre['eval_mlm_accuracy']:.1%}"
        + (f", {pair_task} accuracy {pre['eval_nsp_accuracy']:.1%}" if pair_task else "") + ")",
        *_suite_lines(summary),
        _task_line(summary),
    ]
    comparison = summary.get("comparison")
    if comparison:
        lines.append(f"vs champion: {comparison['primary_metric']} {comparison['candidate']:.4f} vs "
                     f"{comparison['champion']:.4f} on the same dev set; right only by the new model "
                     f"{comparison['candidate_only_correct']}, only by the champion {comparison['champion_only_correct']} "
                     f"(McNemar p {comparison['mcnemar_p_value']:.2g})")
    for info in models:
        lines.append(f"registered: {info['name']} v{info['version']} aliases {info['aliases']} ({info['reason']})")
    links = summary.get("mlflow_links") or {}
    if uri.startswith(("http://", "https://")):
        lines.append(f"MLflow UI:  {links.get('pipeline_run', uri)}")
    else:
        lines.append(f"MLflow UI:  mlflow ui --backend-store-uri {uri} --port 5000   then open "
                     f"{links.get('pipeline_run', 'http://127.0.0.1:5000')}")
    lines += [
        f"Prefect UI: prefect server start   then open http://127.0.0.1:4200/runs/flow-run/{summary['flow_run_id']}",
        f"Predict:    MLFLOW_TRACKING_URI={uri} python -c \"import mlflow, pandas as pd; "
        f"print(mlflow.pyfunc.load_model('models:/{clf_name}@champion').predict({example_source(kind, pairs)}))\"",
    ]
    if not markdown:
        return "\n".join(lines)
    link_lines = [f"- [{'MLflow pipeline run' if k == 'pipeline_run' else k + ' (model version)'}]({v})"
                  for k, v in links.items()]
    return "```\n" + "\n".join(lines) + "\n```\n" + ("\n" + "\n".join(link_lines) + "\n" if link_lines else "")


def _masking_phrase(train: dict, validation: dict) -> str:
    """What the summary says of masking: the training shards' own share, or, where they are masked per batch while
    training (dynamic: no masks in them), the static validation shards' share."""
    if train.get("masking") == "dynamic":
        share = validation["quality"].get("masked_share_of_maskable", float("nan"))
        return f"masked per batch while training (validation shards: {share:.1%} of maskable tokens)"
    return f"masked {train['quality'].get('masked_share_of_maskable', float('nan')):.1%} of maskable tokens"


def _suite_lines(summary: dict) -> list[str]:
    suite = summary.get("suite")
    if not suite:
        return ["suite:      off (no pretrained vs random-init comparison was run)"]
    report = suite["report"]
    lines = [summary_line(report) + f"; suite score {report['suite_score']:.4f} vs {report['twin_suite_score']:.4f}"]
    if suite["vs_champion"]:
        versus = suite["vs_champion"]
        lines.append(f"suite vs champion v{suite['champion_version']}: {versus['suite_score']:.4f} vs "
                     f"{versus['champion_suite_score']:.4f} (paired p {versus['paired_p_value']:.3g})")
    return lines


def _task_line(summary: dict) -> str:
    return model_kind(summary.get("task", {}).get("kind", DEFAULT_MODEL_KIND)).summary_line(summary["classifier"])
