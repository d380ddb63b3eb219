"""bert_core: the bertflow library, one sub-package per stage family, in the pipeline's order.

- `bert_core.ingest`: corpus sources -> cleaned, filtered, deduplicated, decontaminated document shards.
- `bert_core.examples`: documents -> WordPiece tokenizer, token store, NSP/SOP + MLM examples in Arrow shards.
- `bert_core.training`: shards -> a pretrained encoder (presets, data loading, optimiser, budget, checkpoints,
  launch, the pretraining loop).
- `bert_core.downstream`: encoder -> task models (the task catalogue, the task-kind registry, fine-tuning, the suite
  against a random-init twin, evaluation and reports, predict).
- `bert_core.registry`: models -> MLflow registered versions (register and gate, signatures, model cards, the
  pyfunc model).

Shared by all of them, at the top: `config` (config checks), `stage` (stage records, keys, atomic writes),
`metrics` (metric helpers) and `tracking` (where MLflow runs go). A package imports only those and the packages
before it. Every stage runs as plain Python without Prefect: the orchestration layer in `tasks/` and `flows/` only
wraps these functions. `python -m bert_core <stage> --config run.json` is the library's command line and what
`accelerate launch` runs for multi-process training.
"""

__version__ = "0.1.0"
