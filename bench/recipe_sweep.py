"""The recipe sweep of issue 15, recorded: `python bench/recipe_sweep.py SWEEP.json` (seconds; the runs are made
beforehand with `python -m bert_core pretrain` and `python -m bert_core suite`).

SWEEP.json lists the runs: [{"label": "D", "series": "ModernBERT-tiny, MLM", "factor": "architecture",
"pretrain_dir": ".../screen-D", "suite_dir": ".../suite-D"}, ...] ("suite_dirs": a list, for tasks measured
in several suite runs; {"label": "A", "recorded": true} keeps a row of docs/recipe-sweep.json as it stands). For each run this reads what the stages wrote
(the pretraining config and summary, its shards' manifest and masking, the suite's report.json) and
- logs it as one run of the MLflow experiment `bertflow-recipe-sweep` (params: the pretraining and example configs
  and the factor; metrics: training tokens and seconds, held-out MLM accuracy and loss, each suite task's pretrained
  and random-init mean/std, difference and paired p; the suite report as an artifact);
- writes `docs/recipe-sweep.json` (the figures), `docs/recipe-sweep.md` (the README's table) and
  `docs/recipe-suite-vs-tokens.png`: SST-2 dev accuracy of each series against training tokens, each run's
  random-init twin as a grey cross, one-seed screening points hollow, three-seed points with std error bars.
Nothing is recomputed: a run without a suite report is logged and tabled without suite figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bert_core import stage, tracking  # noqa: E402

EXPERIMENT = "bertflow-recipe-sweep"


def read_run(spec: dict) -> dict:
    pretrain_dir = Path(spec["pretrain_dir"])
    config = stage.read_json(pretrain_dir / stage.STAGE_RECORD)["config"]
    summary = stage.read_json(pretrain_dir / "summary.json")
    shards = Path(config["shards_dir"])
    examples = stage.read_json(shards / stage.STAGE_RECORD)["config"]
    train = stage.read_json(shards / "train" / "manifest.json")
    # One suite directory, or several (a task measured later: "suite_dirs"); their tasks are put together.
    report_files = [f for d in spec.get("suite_dirs") or [spec.get("suite_dir")] if d
                    for f in [Path(d) / "report.json"] if f.is_file()]
    reports = [stage.read_json(f) for f in report_files]
    report = {"tasks": [t for r in reports for t in r["tasks"]], "protocol": reports[0]["protocol"]} if reports else None
    # A run that started from an earlier one's weights (a second phase, e.g. on the tasks' text) counts that run's
    # tokens and seconds too: the encoder cost both.
    tokens, seconds, before = summary["train_tokens"], summary["train_seconds"], config.get("init_from")
    while before and (Path(before).parent / "summary.json").is_file():
        earlier = Path(before).parent
        tokens += stage.read_json(earlier / "summary.json")["train_tokens"]
        seconds += stage.read_json(earlier / "summary.json")["train_seconds"]
        before = stage.read_json(earlier / stage.STAGE_RECORD)["config"].get("init_from")
    return {
        "label": spec["label"], "series": spec["series"], "factor": spec.get("factor", ""),
        "model": f"{config.get('architecture', 'bert')} {config['preset']}",
        "pair_objective": examples["pair_objective"], "mask_rate": examples["mlm"]["mlm_probability"],
        "corpus": spec.get("corpus", ""), "corpus_tokens": train["num_tokens"],
        "batch": config["per_device_train_batch_size"] * config.get("gradient_accumulation_steps", 1),
        "learning_rate": config["learning_rate"], "warmup_fraction": config.get("warmup_fraction"),
        "train_tokens": tokens, "train_seconds": round(seconds, 1), "phase_tokens": summary["train_tokens"],
        "eval_mlm_accuracy": summary["eval_mlm_accuracy"], "eval_mlm_loss": summary["eval_mlm_loss"],
        "suite": None if report is None else [
            {k: t[k] for k in ("task", "metric", "pretrained_mean", "pretrained_std", "pretrained_scores", "twin_mean",
                               "twin_std", "twin_scores", "delta", "paired_p_value", "pretrained_learning_rate")}
            for t in report["tasks"]],
        "suite_protocol": None if report is None else report["protocol"],
        "_config": config, "_examples": examples, "_report_files": [str(f) for f in report_files],
        "_pretrain_dir": str(pretrain_dir),
    }


def log_to_mlflow(run: dict) -> str:
    from mlflow import MlflowClient

    from bert_core.downstream.suite import task_metrics

    metrics = {**{k: run[k] for k in ("train_tokens", "train_seconds", "eval_mlm_accuracy", "eval_mlm_loss",
                                      "corpus_tokens")}, **task_metrics(run["suite"] or [])}

    tracking.configure_tracking()
    client = MlflowClient()
    # A rerun replaces the run's earlier record instead of adding a second one.
    experiment = tracking.ensure_experiment(EXPERIMENT)
    for old in client.search_runs([experiment], f"tags.`bertflow.sweep_source` = '{run['_pretrain_dir']}'"):
        client.delete_run(old.info.run_id)
    run_id = tracking.start_run(EXPERIMENT, f"{run['label']}: {run['series']}",
                                {"pretrain": run["_config"], "examples": run["_examples"], "factor": run["factor"],
                                 "corpus": run["corpus"], "suite_protocol": run["suite_protocol"]},
                                tags={"bertflow.sweep_label": run["label"], "bertflow.sweep_series": run["series"],
                                      "bertflow.sweep_source": run["_pretrain_dir"]})
    tracking.log_metrics(run_id, metrics)
    for index, path in enumerate(run["_report_files"]):
        client.log_artifact(run_id, path, artifact_path=f"suite-{index}" if index else None)
    tracking.finish_run(run_id)
    return run_id


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    # Each run's twin as measured beside it (same seeds, same threads): fine-tuning the same twin weights under
    # another thread count moves its score by up to ~1 point, so runs are compared with their own measurement.
    twin_label = "random-init twin of that run (same seeds)"
    for run in runs:
        for task in run["suite"] or []:
            if task["task"] == "sst2":
                ax.errorbar(run["train_tokens"], task["twin_mean"],
                            yerr=task["twin_std"] if len(task["twin_scores"]) > 1 else None, marker="x", ms=7,
                            color="0.45", capsize=3, ls="none", label=twin_label)
                twin_label = None
    placed: dict[tuple, int] = {}  # labels already at a point: the next one goes above them
    for series, marker in zip(dict.fromkeys(r["series"] for r in runs), "osD^vP<>"):
        points = sorted(((r["train_tokens"], t, r["label"]) for r in runs if r["series"] == series
                         for t in r["suite"] or [] if t["task"] == "sst2"), key=lambda p: p[0])
        if not points:
            continue
        line, = ax.plot([p[0] for p in points], [p[1]["pretrained_mean"] for p in points], marker=marker, label=series)
        for tokens, task, label in points:
            several = len(task["pretrained_scores"]) > 1
            ax.errorbar(tokens, task["pretrained_mean"], yerr=task["pretrained_std"] if several else None,
                        marker=marker, color=line.get_color(), mfc=line.get_color() if several else "white",
                        capsize=3)
            at = (round(tokens, -5), round(task["pretrained_mean"], 3))
            placed[at] = placed.get(at, -1) + 1
            ax.annotate(label, (tokens, task["pretrained_mean"]), textcoords="offset points",
                        xytext=(5, 4 + 9 * placed[at]), fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks([t for t in (1e6, 3e6, 1e7, 3e7, 1e8, 3e8) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1e6:g}M"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("pretraining tokens (non-pad tokens the optimizer saw)")
    ax.set_ylabel("SST-2 dev accuracy (full train set)")
    ax.set_title("Pretrained vs random init on SST-2: hollow = 1 seed, filled = 2-3 seeds (+- std)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(table: list[dict]) -> str:
    """The sweep as the README's table: one row per run, SST-2 of both arms where a suite ran."""
    lines = ["| run | factor | model | objective | corpus | mask | batch | lr | tokens | MLM accuracy (loss) | "
             "SST-2 pretrained | random init | difference | other tasks (difference, paired p) |", "|" + "---|" * 14]
    for run in table:
        sst2 = next((t for t in run["suite"] or [] if t["task"] == "sst2"), None)
        seeds = len(sst2["pretrained_scores"]) if sst2 else 0
        arms = ([f"{sst2['pretrained_mean']:.4f}" + (f" +- {sst2['pretrained_std']:.4f}" if seeds > 1 else ""),
                 f"{sst2['twin_mean']:.4f}" + (f" +- {sst2['twin_std']:.4f}" if seeds > 1 else ""),
                 f"{100 * sst2['delta']:+.1f} ({seeds} seed{'s' if seeds > 1 else ''})"] if sst2 else ["-", "-", "-"])
        lines.append(" | ".join([
            f"| {run['label']}", run["factor"], run["model"].replace("bert-", "").replace(" ", "-"),
            "MLM + " + run["pair_objective"].upper() if run["pair_objective"] != "none" else "MLM", run["corpus"],
            f"{run['mask_rate']:.0%}", str(run["batch"]), f"{run['learning_rate']:g}", f"{run['train_tokens'] / 1e6:.1f}M",
            f"{run['eval_mlm_accuracy']:.1%} ({run['eval_mlm_loss']:.2f})", *arms,
            ", ".join(f"{t['task'].upper()} {100 * t['delta']:+.1f} (p {t['paired_p_value']:.2g})"
                      for t in run["suite"] or [] if t["task"] != "sst2") or "-"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    specs = json.loads(Path(argv[1]).read_text())
    out = REPO / "docs"
    # {"label": "A", "recorded": true}: the row as docs/recipe-sweep.json holds it (a run of an earlier session whose
    # directories are gone; it was logged to MLflow then), not read again.
    recorded = {r["label"]: r for r in json.loads((out / "recipe-sweep.json").read_text())} \
        if (out / "recipe-sweep.json").is_file() else {}
    runs = [recorded[spec["label"]] if spec.get("recorded") else read_run(spec) for spec in specs]
    for spec, run in zip(specs, runs):
        if not spec.get("recorded"):
            run["mlflow_run_id"] = log_to_mlflow(run)
    out.mkdir(exist_ok=True)
    table = [{k: v for k, v in run.items() if not k.startswith("_")} for run in runs]
    stage.write_json(out / "recipe-sweep.json", table)
    (out / "recipe-sweep.md").write_text(markdown_table(table))
    plot(runs, out / "recipe-suite-vs-tokens.png")
    for run in table:
        sst2 = next((t for t in run["suite"] or [] if t["task"] == "sst2"), None)
        print(f"{run['label']:>2} {run['series']:<40} {run['train_tokens'] / 1e6:5.1f}M tokens  MLM acc "
              f"{run['eval_mlm_accuracy']:.3f}  SST-2 " + (f"{sst2['pretrained_mean']:.4f} vs {sst2['twin_mean']:.4f}"
                                                           if sst2 else "-"))
    print(json.dumps({"experiment": EXPERIMENT, "tracking_uri": tracking.redact(tracking.configure_tracking()),
                      "runs": len(runs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
