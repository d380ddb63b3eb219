"""Command line of the library: `python -m bert_core <stage> --config run.json`.

Each stage reads its config dataclass from a JSON file (unknown keys are an error) and prints its result as JSON
on stdout. `accelerate launch ... -m bert_core pretrain --config run.json` runs pretraining in several processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from bert_core import stage


def _ingest(args) -> object:
    from bert_core.ingest.corpus import (  # lazy: the CLI imports a stage's code only when it runs
        IngestConfig,
        ingest_corpus,
    )

    return str(ingest_corpus(stage.load_config(IngestConfig, args.config), args.output_dir))


def _examples(args) -> object:
    from bert_core.examples.generation import (  # lazy: the CLI imports a stage's code only when it runs
        ExamplesConfig,
        generate_examples,
    )

    return str(generate_examples(stage.load_config(ExamplesConfig, args.config), args.documents_dir, args.output_dir,
                                 tokens_dir=args.tokens_dir, workers=args.workers))


def _pretrain(args) -> object:
    from bert_core.training.pretrain import (  # lazy: the CLI imports a stage's code only when it runs
        PretrainConfig,
        pretrain,
    )

    return pretrain(stage.load_config(PretrainConfig, args.config))


def _finetune(args) -> object:
    from bert_core.downstream.classification import (  # lazy: the CLI imports a stage's code only when it runs
        FinetuneConfig,
        finetune,
    )

    return finetune(stage.load_config(FinetuneConfig, args.config))


def _finetune_ner(args) -> object:
    from bert_core.downstream.ner import (  # lazy: the CLI imports a stage's code only when it runs
        NerConfig,
        finetune_ner,
    )

    return finetune_ner(stage.load_config(NerConfig, args.config))


def _finetune_qa(args) -> object:
    from bert_core.downstream.qa import QaConfig, finetune_qa  # lazy: the CLI imports a stage's code only when it runs

    return finetune_qa(stage.load_config(QaConfig, args.config))


def _split_squad(args) -> object:
    from bert_core.downstream.qa import split_squad_by_article  # lazy: the CLI imports a stage's code only when it runs

    return split_squad_by_article(args.squad_file, args.train_out, args.eval_out, eval_articles=args.eval_articles,
                                  seed=args.seed)


def _evaluate(args) -> object:
    from bert_core.downstream.evaluation import (  # lazy: the CLI imports a stage's code only when it runs
        EvaluateConfig,
        evaluate_models,
    )

    return evaluate_models(stage.load_config(EvaluateConfig, args.config))


def _suite(args) -> object:
    from bert_core.downstream.suite import (  # lazy: the CLI imports a stage's code only when it runs
        SuiteConfig,
        run_suite,
        summary_line,
    )

    report = run_suite(stage.load_config(SuiteConfig, args.config))
    print(summary_line(report), file=sys.stderr)
    return report


def _register(args) -> object:
    from bert_core.registry.registration import (  # lazy: the CLI imports a stage's code only when it runs
        RegisterConfig,
        register_model,
    )

    return register_model(stage.load_config(RegisterConfig, args.config))


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


def _inspect(args) -> None:
    from bert_core.examples.quality import describe_examples  # lazy: the CLI imports a stage's code only when it runs

    print(describe_examples(args.shards_dir, args.n))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bert_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="INFO", help="DEBUG also prints the traceback of an error")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = sub.add_parser("ingest", help="read, clean, deduplicate and sentence-split a corpus into Parquet")
    p.add_argument("--config", type=Path, required=True, help="IngestConfig JSON")
    p.add_argument("--output-dir", type=Path, required=True)
    p.set_defaults(run=_ingest)

    p = sub.add_parser("examples", help="train a WordPiece tokenizer and write pretraining examples (NSP/SOP pairs or full sentences) to Arrow shards")
    p.add_argument("--config", type=Path, required=True, help="ExamplesConfig JSON")
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

    p = sub.add_parser("pretrain", help="pretrain BertForPreTraining (MLM+NSP) with Accelerate")
    p.add_argument("--config", type=Path, required=True, help="PretrainConfig JSON")
    p.set_defaults(run=_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a pretrained model for sentence or sentence-pair classification")
    p.add_argument("--config", type=Path, required=True, help="FinetuneConfig JSON")
    p.set_defaults(run=_finetune)

    p = sub.add_parser("finetune-ner", help="fine-tune a token classifier (NER) on CoNLL-format files")
    p.add_argument("--config", type=Path, required=True, help="NerConfig JSON")
    p.set_defaults(run=_finetune_ner)

    p = sub.add_parser("finetune-qa", help="fine-tune extractive question answering on SQuAD-format JSON")
    p.add_argument("--config", type=Path, required=True, help="QaConfig JSON")
    p.set_defaults(run=_finetune_qa)

    p = sub.add_parser("split-squad", help="split a SQuAD JSON file into train/eval files by whole articles")
    p.add_argument("squad_file", type=Path)
    p.add_argument("--train-out", type=Path, required=True)
    p.add_argument("--eval-out", type=Path, required=True)
    p.add_argument("--eval-articles", type=int, required=True, help="how many articles go to the eval file")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_split_squad)

    p = sub.add_parser("evaluate", help="held-out MLM/NSP metrics of a pretrained model; dev metrics of a classifier")
    p.add_argument("--config", type=Path, required=True, help="EvaluateConfig JSON")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("suite", help="fine-tune tasks from an encoder and from its random-init twin; report the deltas")
    p.add_argument("--config", type=Path, required=True, help="SuiteConfig JSON")
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

    p = sub.add_parser("register", help="log a model to MLflow, register it and apply the promotion gate")
    p.add_argument("--config", type=Path, required=True, help="RegisterConfig JSON")
    p.set_defaults(run=_register)

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
