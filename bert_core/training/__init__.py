"""Pretraining: example shards in, a pretrained encoder out.

In: the examples stage's `examples/`. Out: `pretrain/` with `checkpoints/step-{step:07d}/` (exact resume),
`metrics.jsonl`, `summary.json` and `final/`, a plain `save_pretrained` model with its tokenizer that vanilla
transformers loads. The same package holds what fine-tuning reuses: model loading and data batching.

- `model`: presets (bert-tiny ... bert-large, ModernBERT), the pretraining objective, where a model comes from.
- `data`: batch order, collation and the in-memory rows of fine-tuning.
- `optim`: AdamW and LAMB.
- `budget`: a run's length in steps, tokens or seconds, and its schedule.
- `checkpoints`: write, find and resume checkpoints; the metrics log.
- `hardware`: the precision "auto" stands for here, and thread shares of processes on one machine.
- `launch`: the `accelerate launch` command and the processes of a run.
- `pretrain`: the stage itself (`pretrain`: the Accelerate loop).
"""
