"""Command line of the library: `python -m bert_core <stage> --config run.json --set name=value`.

Each stage reads its config dataclass from a JSON file and `--set` fields over it (unknown names are an error;
`python -m bert_core STAGE --help` lists the fields) and prints its result as JSON on stdout.
`accelerate launch ... -m bert_core pretrain --config run.json` runs pretraining in several processes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from bert_core import stage
from bert_core.config import ConfigError, config_doc, describe_fields, given


class StageParser(argparse.ArgumentParser):
    """A stage's parser: its help lists the fields of its config (`config`, "module:Class", imported only when the
    help is asked for, so that the CLI stays light)."""

    def __init__(self, *args, config: str | None = None, **kwargs):
        super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.config = config
        if config:
            name = config.rsplit(":", 1)[1]
            self.add_argument("--config", type=Path, help=f"a JSON file of {name} fields")
            self.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="set_fields",
                              help="a field over the file's, dotted for a nested config (tokenizer.vocab_size=8192); "
                                   "VALUE is JSON (60, 1e-3, true, null, [1, 2]), else a string (repeatable)")

    def format_help(self) -> str:
        text = super().format_help()
        if not self.config:
            return text
        module, name = self.config.split(":")
        cls = getattr(importlib.import_module(module), name)
        about = config_doc(cls) or "\n\n".join((importlib.import_module(module).__doc__ or "").split("\n\n")[:2])
        lines = [text, *(textwrap.fill(" ".join(part.split()), 100) + "\n" for part in about.split("\n\n")),
                 f"{name} fields (a --config file's keys, or --set NAME=VALUE):"]
        for field, takes, meaning in describe_fields(cls):
            lines.append(f"  {field}")
            lines += textwrap.wrap(f"{takes}. {meaning}" if meaning else takes, 100,
                                   initial_indent=" " * 6, subsequent_indent=" " * 6)
        return "\n".join(lines) + "\n"


def _config(cls, args):
    """The stage's config: the --config file's fields (none without one), then each --set over them; the config
    checks every value (`bert_core.config`), so an error names the field and what it expected."""
    values = stage.read_config_file(cls, args.config) if args.config else {}
    for item in args.set_fields:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set {item!r}; expected NAME=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        for part in reversed(name.split(".")):
            value = {part: value}
        values = given(value, values)
    try:
        return stage.config_from_dict(cls, values)
    except ConfigError as err:
        raise ConfigError(f"{args.config}: {err}" if args.config else str(err)) from None


def _ingest(args) -> object:
    from bert_core.ingest.corpus import (  # lazy: the CLI imports a stage's code only when it runs
        IngestConfig,
        ingest_corpus,
    )

    return str(ingest_corpus(_config(IngestConfig, args), args.output_dir))


def _examples(args) -> object:
    from bert_core.examples.generation import (  # lazy: the CLI imports a stage's code only when it runs
        ExamplesConfig,
        generate_examples,
    )

    return str(generate_examples(_config(ExamplesConfig, args), args.documents_dir, args.output_dir,
                                 tokens_dir=args.tokens_dir, workers=args.workers))


def _pretrain(args) -> object:
    from bert_core.training.pretrain import (  # lazy: the CLI imports a stage's code only when it runs
        PretrainConfig,
        pretrain,
    )

    return pretrain(_config(PretrainConfig, args))


def _finetune(args) -> object:
    from bert_core.downstream.classification import (  # lazy: the CLI imports a stage's code only when it runs
        FinetuneConfig,
        finetune,
    )

    return finetune(_config(FinetuneConfig, args))


def _finetune_ner(args) -> object:
    from bert_core.downstream.ner import (  # lazy: the CLI imports a stage's code only when it runs
        NerConfig,
        finetune_ner,
    )

    return finetune_ner(_config(NerConfig, args))


def _finetune_qa(args) -> object:
    from bert_core.downstream.qa import QaConfig, finetune_qa  # lazy: the CLI imports a stage's code only when it runs

    return finetune_qa(_config(QaConfig, args))


def _split_squad(args) -> object:
    from bert_core.downstream.qa import split_squad_by_article  # lazy: the CLI imports a stage's code only when it runs

    return split_squad_by_article(args.squad_file, args.train_out, args.eval_out, eval_articles=args.eval_articles,
                                  seed=args.seed)


def _evaluate(args) -> object:
    from bert_core.downstream.evaluation import (  # lazy: the CLI imports a stage's code only when it runs
        EvaluateConfig,
        evaluate_models,
    )

    return evaluate_models(_config(EvaluateConfig, args))


def _suite(args) -> object:
    from bert_core.downstream.suite import (  # lazy: the CLI imports a stage's code only when it runs
        SuiteConfig,
        run_suite,
        summary_line,
    )

    report = run_suite(_config(SuiteConfig, args))
    print(summary_line(report), file=sys.stderr)
    return report


def _register(args) -> object:
    from bert_core.registry.registration import (  # lazy: the CLI imports a stage's code only when it runs
        RegisterConfig,
        register_model,
    )

    return register_model(_config(RegisterConfig, args))


def _rollback(args) -> object:
    from bert_core.registry.registration import rollback  # lazy: the CLI imports a stage's code only when it runs

    return rollback(args.model, args.version, reason=args.reason)


def _predict(args) -> None:
    from bert_core.downstream import predict  # lazy: the CLI imports a stage's code only when it runs
    from bert_core.ingest.textfiles import read_table_file  # lazy: the CLI imports a stage's code only when it runs
    from bert_core.training.model import resolve_model  # lazy: the CLI imports a stage's code only when it runs

    model = resolve_model(args.model)
    texts, pairs = list(args.text or []), list(args.pair or []) or None
    if args.input:
        table = read_table_file(args.input, string_columns=tuple(c for c in (args.text_column, args.pair_column) if c))
        texts += [str(t) for t in table.column(args.text_column).to_pylist()]
        if args.pair_column:
            pairs = (pairs or []) + [str(t) for t in table.column(args.pair_column).to_pylist()]
    if not texts:
        raise SystemExit("predict: give --text (repeatable) or --input FILE")
    if pairs is not None and len(pairs) != len(texts):
        raise SystemExit(f"predict: {len(texts)} texts but {len(pairs)} pairs")
    if args.task == "fill-mask":
        results = [{"text": t, "masks": m} for t, m in zip(texts, predict.fill_mask(model, texts, args.top_k))]
    elif args.task == "nsp":
        if pairs is None:
            raise SystemExit("predict --task nsp: give the second sentences with --pair")
        results = [{"text": t, "pair": p, "is_next_probability": round(q, 6)}
                   for t, p, q in zip(texts, pairs, predict.next_sentence_probability(model, texts, pairs))]
    elif args.task == "qa":
        if pairs is None:
            raise SystemExit("predict --task qa: give the questions with --text and their contexts with --pair")
        results = [{"question": t, "context": p, **r}
                   for t, p, r in zip(texts, pairs, predict.answer(model, texts, pairs, args.max_seq_length))]
    elif args.task == "classify":
        results = [{"text": t, **r} for t, r in zip(texts, predict.classify(model, texts, pairs, args.max_seq_length))]
    else:
        if not args.output:
            raise SystemExit("predict --task embed: give --output PATH (writes PATH.npy and PATH.arrow)")
        results = [predict.embed(model, texts, args.output, pooling=args.pooling)]
    for result in results:
        print(json.dumps(result, ensure_ascii=False))


def _summary(args) -> None:
    from bert_core.registry.summary import render_summary  # lazy: the CLI imports a stage's code only when it runs

    print(render_summary(stage.read_json(args.summary_json), markdown=args.markdown))


def _inspect(args) -> None:
    from bert_core.examples.quality import describe_examples  # lazy: the CLI imports a stage's code only when it runs

    print(describe_examples(args.shards_dir, args.n))


def _stage_parser(sub, name: str, about: str, config: str) -> StageParser:
    return sub.add_parser(name, help=about, description=about, config=config)


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m bert_core", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG also prints the traceback of an error")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = _stage_parser(sub, "ingest", "read, clean, deduplicate and sentence-split a corpus into Parquet",
                       "bert_core.ingest.corpus:IngestConfig")
    p.add_argument("--output-dir", type=Path, required=True)
    p.set_defaults(run=_ingest)

    p = _stage_parser(sub, "examples", "train a WordPiece tokenizer and write pretraining examples (NSP/SOP pairs or full sentences) to Arrow shards",
                       "bert_core.examples.generation:ExamplesConfig")
    p.add_argument("--documents-dir", type=Path, required=True, help="an ingest output directory")
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--tokens-dir", type=Path, help="the token store (default: `tokens` beside the output)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes generating units (default: one per CPU; the output is the same for any number)")
    p.set_defaults(run=_examples)

    p = sub.add_parser("inspect-shards", help="print decoded examples with their masks (<target>) and labels")
    p.add_argument("shards_dir", type=Path, help="an examples directory or one of its splits")
    p.add_argument("--n", type=int, default=3, help="how many examples")
    p.set_defaults(run=_inspect)

    p = _stage_parser(sub, "pretrain", "pretrain BertForPreTraining (MLM+NSP) with Accelerate",
                       "bert_core.training.pretrain:PretrainConfig")
    p.set_defaults(run=_pretrain)

    p = _stage_parser(sub, "finetune", "fine-tune a pretrained model for sentence or sentence-pair classification",
                       "bert_core.downstream.classification:FinetuneConfig")
    p.set_defaults(run=_finetune)

    p = _stage_parser(sub, "finetune-ner", "fine-tune a token classifier (NER) on CoNLL-format files",
                       "bert_core.downstream.ner:NerConfig")
    p.set_defaults(run=_finetune_ner)

    p = _stage_parser(sub, "finetune-qa", "fine-tune extractive question answering on SQuAD-format JSON",
                       "bert_core.downstream.qa:QaConfig")
    p.set_defaults(run=_finetune_qa)

    p = sub.add_parser("split-squad", help="split a SQuAD JSON file into train/eval files by whole articles")
    p.add_argument("squad_file", type=Path)
    p.add_argument("--train-out", type=Path, required=True)
    p.add_argument("--eval-out", type=Path, required=True)
    p.add_argument("--eval-articles", type=int, required=True, help="how many articles go to the eval file")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_split_squad)

    p = _stage_parser(sub, "evaluate", "held-out MLM/NSP metrics of a pretrained model; dev metrics of a classifier",
                       "bert_core.downstream.evaluation:EvaluateConfig")
    p.set_defaults(run=_evaluate)

    p = _stage_parser(sub, "suite", "fine-tune tasks from an encoder and from its random-init twin; report the deltas",
                       "bert_core.downstream.suite:SuiteConfig")
    p.set_defaults(run=_suite)

    p = sub.add_parser("predict", help="fill-mask, next-sentence probability, classification, QA answers or embeddings")
    p.add_argument("--model", required=True, help="a model directory, models:/name@alias, or a package that ships one")
    p.add_argument("--task", required=True, choices=("fill-mask", "nsp", "classify", "qa", "embed"))
    p.add_argument("--text", action="append", help="an input text (repeatable)")
    p.add_argument("--pair", action="append",
                   help="the second text of a pair, in --text order (repeatable); for --task qa the context")
    p.add_argument("--input", type=Path, help="a TSV/CSV/JSONL/Parquet file of texts")
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--pair-column")
    p.add_argument("--top-k", type=int, default=5, help="fill-mask guesses per [MASK]")
    p.add_argument("--pooling", default="mean", choices=("mean", "cls"), help="sentence vector for --task embed")
    p.add_argument("--output", type=Path, help="--task embed: write OUTPUT.npy (pooled) and OUTPUT.arrow (tokens)")
    p.add_argument("--max-seq-length", type=int, default=None,
                   help="default: fine-tuning's default for the --task (classify, qa)")
    p.set_defaults(run=_predict)

    p = _stage_parser(sub, "register", "log a model to MLflow, register it and apply the promotion gate",
                       "bert_core.registry.registration:RegisterConfig")
    p.set_defaults(run=_register)

    p = sub.add_parser("summary", help="print a bert-pipeline run's summary saved with --summary-json")
    p.add_argument("summary_json", type=Path, help="the file `python -m flows.pipeline --summary-json FILE` wrote")
    p.add_argument("--markdown", action="store_true", help="as the Prefect artifact: a fenced block and links")
    p.set_defaults(run=_summary)

    p = sub.add_parser("rollback", help="move the champion alias of a registered model back to an earlier version")
    p.add_argument("--model", required=True, help="registered model name, e.g. bertflow-sst2")
    p.add_argument("--version", required=True, help="the version that becomes champion again")
    p.add_argument("--reason", default="", help="recorded on the version as the tag bertflow.rollback")
    p.set_defaults(run=_rollback)
    return parser


# What a user can fix: a config value, a path, an input that gives nothing to work with. The CLI prints these in one
# line and exits 2; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = args.run(args)
    except USER_ERRORS as err:
        if level == "DEBUG":
            logging.getLogger("bert_core").exception("%s failed", args.stage)
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}  (--log-level DEBUG shows the traceback)", file=sys.stderr)
        return 2
    if result is not None:
        json.dump(stage.to_jsonable(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    from bert_core.training import launch  # lazy: the CLI imports a stage's code only when it runs

    if launch.launched_rank():  # its work is saved: no interpreter finalisation to hang in (see bert_core.training.launch)
        launch.exit_now(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
