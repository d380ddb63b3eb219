"""Example generation: document shards in, pretraining examples out.

In: the ingest stage's `documents/`. Out: `examples/` with a trained WordPiece `tokenizer/`, and `train/` and
`validation/` splits of equal-size Arrow shards (`shard-{index:05d}.arrow` + `manifest.json`) of NSP/SOP sentence
pairs with static or dynamic MLM masks.

- `tokenizer`: train or load a WordPiece tokenizer with BERT's special tokens.
- `token_store`: every document tokenized once into a memory-mapped `tokens-{split}.arrow`.
- `pairs`: google-research/bert's sentence pairs (NSP), SOP and full-sentence segments.
- `masking`: the 80/10/10 MLM masking, static (in the shards) or dynamic (per batch).
- `shards`: the Arrow shard files, their manifest, and `ShardDataset` to read them back.
- `quality`: the quality figures of generated examples and the gates a split must pass.
- `generation`: the stage itself (`generate_examples`: plan units, generate them in parallel, merge into shards).
"""
