"""Benchmark of pretraining throughput. Run with no arguments: `python bench/pretrain.py` (about 6-8 minutes).

Same model (bert-mini: 4 layers, 256 wide, 4 heads, vocabulary 30,522), same text (~4 MB of the team's Wikipedia
extract, ingested by bertflow), sequence length 128, batch 32, CPU, each in a fresh process, BENCH_REPEATS
(default 3) times interleaved; medians are reported:
- Hugging Face: `Trainer` + `DataCollatorForLanguageModeling` (15% masking) over `datasets` text -> tokenize ->
  `group_texts` into 128-token blocks, `BertForMaskedLM`, fp32 (the run_mlm.py way);
- bertflow: `pretrain()` on shards from the examples stage (NSP pairs, static masks), `BertForPreTraining` with
  the MLM head only at masked positions, length-binned batches, fp32 like the Trainer (the goal ratio compares the
  same precision); also once with `mixed_precision="auto"` (bf16 where the CPU has bf16 units), an extra line.
Step times exclude the first steps (warm-up). Reported: tokens/s (text tokens, not padding) and their ratio; the
loader's share of step time and the padding share of computed positions (from bertflow's own metrics); achieved
model GFLOP/s (useful FLOPs: encoder on real tokens, MLM head on masked positions, x3 for forward + backward)
against this machine's measured bf16 and fp32 matmul peak on the same threads. Prints a table, writes
bench/results/pretrain.json and prints one JSON object as its last line.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from child import report, run_child  # noqa: E402

SHARED = Path(os.environ.get("BERTFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
WIKI = SHARED / "corpus" / "wikipedia" / "enwiki_2015_extract" / "AA"
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
THREADS = str(os.cpu_count() or 1)
HF_STEPS, OURS_STEPS, WARMUP = 12, 40, 4
MINI = dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024)

HF = r"""
import json, sys, time
import torch
import datasets
from transformers import (AutoTokenizer, BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer,
                          TrainerCallback, TrainingArguments)
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
raw = datasets.load_dataset("text", data_files=sys.argv[2], split="train", cache_dir=sys.argv[3])
raw = raw.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True)
tokenized = raw.map(lambda b: tokenizer(b["text"], return_special_tokens_mask=True), batched=True, remove_columns=["text"])
def group_texts(examples, size=128):
    concatenated = {k: sum(examples[k], []) for k in examples}
    total = len(concatenated["input_ids"]) // size * size
    return {k: [v[i : i + size] for i in range(0, total, size)] for k, v in concatenated.items()}
grouped = tokenized.map(group_texts, batched=True)
steps, warmup = int(sys.argv[5]), int(sys.argv[6])
model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **json.loads(sys.argv[7])))
class Clock(TrainerCallback):
    times = []
    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())
args = TrainingArguments(output_dir=sys.argv[4], per_device_train_batch_size=32, max_steps=steps, learning_rate=1e-4,
                         logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                         disable_tqdm=True, seed=42)
trainer = Trainer(model=model, args=args, train_dataset=grouped,
                  data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15), callbacks=[Clock()])
trainer.train()
t = Clock.times
step_seconds = (t[-1] - t[warmup - 1]) / (len(t) - warmup)
print(json.dumps({"step_seconds": step_seconds, "tokens_per_second": 32 * 128 / step_seconds,
                  "peak_rss_mb": peak_mb()}))
"""

OURS = r"""
import json, statistics, sys
from bert_core.training.pretrain import PretrainConfig, pretrain
steps, warmup, precision = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
config = PretrainConfig(shards_dir=sys.argv[1], output_dir=sys.argv[2], preset="bert-mini", max_seq_length=128,
                        per_device_train_batch_size=32, learning_rate=1e-4, num_warmup_steps=10,
                        max_train_steps=steps, logging_steps=warmup, eval_steps=10**6, checkpointing_steps=10**6,
                        mixed_precision=precision, resume_from_checkpoint=None)
summary = pretrain(config)
records = [json.loads(l) for l in open(f"{sys.argv[2]}/metrics.jsonl") if '"loss"' in l][1:]  # first window: warm-up
print(json.dumps({"tokens_per_second": statistics.mean(r["tokens_per_second"] for r in records),
                  "loader_share": statistics.mean(r["loader_share"] for r in records),
                  "collate_share": statistics.mean(r["collate_share"] for r in records),
                  "padding_share": statistics.mean(r["padding_share"] for r in records),
                  "mixed_precision": summary["mixed_precision"], "peak_rss_mb": peak_mb()}))
"""

PEAK = r"""
import json, sys, time
import torch
def best(dtype, n=2048, repeats=5):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9
print(json.dumps({"bf16_gflops": best(torch.bfloat16), "fp32_gflops": best(torch.float32)}))
"""


def useful_flops_per_token(shards_dir: Path, hidden: int, layers: int, vocab: int) -> float:
    """Forward + backward FLOPs per real token of an average example: encoder on its real tokens, MLM head at its
    masked positions, NSP head (multiply-add = 2 FLOPs; backward = 2 x forward)."""
    from bert_core.examples.shards import ShardDataset

    dataset = ShardDataset(shards_dir / "train")
    n = min(len(dataset), 2000)
    lengths = dataset.lengths[:n].astype(float)
    masked = sum(len(dataset[i]["masked_lm_positions"]) for i in range(n)) / n
    per_layer = sum(24 * L * hidden**2 + 4 * L * L * hidden for L in lengths) / n
    forward = layers * per_layer + masked * (2 * hidden**2 + 2 * hidden * vocab) + 2 * hidden**2
    return 3 * forward / lengths.mean()


def main() -> None:
    from bert_core.ingest.dedup import DedupConfig
    from bert_core.examples.generation import ExamplesConfig, generate_examples
    from bert_core.ingest.corpus import IngestConfig, ingest_corpus, read_ingested
    from bert_core.examples.tokenizer import TokenizerConfig, train_tokenizer

    files = sorted(str(p) for p in WIKI.glob("wiki_*.gz"))[:2]
    if not files:
        sys.exit(f"shared data not found at {SHARED}; set BERTFLOW_SHARED_DATA")
    work = Path(tempfile.mkdtemp(prefix="bertflow-bench-pretrain-"))
    try:
        documents = ingest_corpus(IngestConfig(sources=tuple(files), validation_fraction=0.05,
                                               dedup=DedupConfig(near=False)), work / "documents")
        docs = read_ingested(documents, "train")
        text = work / "sentences.txt"
        text.write_text("".join("\n".join(d) + "\n\n" for d in docs), encoding="utf-8")
        tokenizer = train_tokenizer([s for d in docs for s in d], TokenizerConfig(vocab_size=30522, min_frequency=1))
        tokenizer.save_pretrained(work / "tokenizer")
        vocab = len(tokenizer)
        examples = generate_examples(ExamplesConfig(max_seq_length=128, tokenizer=TokenizerConfig(
            tokenizer_path=str(work / "tokenizer"))), documents, work / "examples")
        env = {"OMP_NUM_THREADS": THREADS}
        peak = run_child(PEAK, env=env)
        runs: dict[str, list[dict]] = {}
        for _ in range(REPEATS):
            shutil.rmtree(work / "hf-out", ignore_errors=True)
            runs.setdefault("hf", []).append(run_child(
                HF, work / "tokenizer", text, work / "hf-cache", work / "hf-out", HF_STEPS, WARMUP, json.dumps(MINI),
                env=env))
            shutil.rmtree(work / "ours", ignore_errors=True)
            runs.setdefault("ours", []).append(run_child(OURS, examples, work / "ours", OURS_STEPS, WARMUP, "no",
                                                         env=env))
        shutil.rmtree(work / "ours", ignore_errors=True)
        auto = run_child(OURS, examples, work / "ours", OURS_STEPS, WARMUP, "auto", env=env)
        flops_per_token = useful_flops_per_token(examples, 256, 4, vocab)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    hf_tps, ours_tps = med("hf", "tokens_per_second"), med("ours", "tokens_per_second")
    achieved = ours_tps * flops_per_token / 1e9
    print(f"\nbert-mini (4x256, vocab {vocab:,}), seq 128, batch 32, {THREADS} threads; median of {REPEATS} runs\n")
    print(f"{'':52s} {'tokens/s':>9s} {'runs':>28s}")
    rows = [("Hugging Face Trainer + DataCollatorForLanguageModeling, fp32", "hf"),
            ("bertflow pretrain, fp32", "ours")]
    for label, name in rows:
        each = ", ".join(f"{r['tokens_per_second']:.0f}" for r in runs[name])
        print(f"{label:52s} {med(name, 'tokens_per_second'):9.0f} {each:>28s}")
    print(f"{'bertflow pretrain, auto: ' + auto['mixed_precision'] + ' (one run)':52s} {auto['tokens_per_second']:9.0f}")
    print(f"\nloader share {med('ours', 'loader_share'):.2%} of step time waited for a batch (collating in the "
          f"loader thread: {med('ours', 'collate_share'):.2%}), padding share {med('ours', 'padding_share'):.2%}, "
          f"achieved {achieved:.0f} GFLOP/s (fp32) = {achieved / peak['fp32_gflops']:.1%} of the fp32 matmul peak "
          f"({peak['fp32_gflops']:.0f} GFLOP/s; bf16 {peak['bf16_gflops']:.0f})")
    result = {
        "ratio_vs_hf_trainer": ours_tps / hf_tps,
        "ratio_auto_vs_hf_trainer": auto["tokens_per_second"] / hf_tps,
        "auto_mixed_precision": auto["mixed_precision"],
        "loader_share": med("ours", "loader_share"),
        "collate_share": med("ours", "collate_share"),
        "padding_share": med("ours", "padding_share"),
        "achieved_gflops": achieved,
        "matmul_peak_bf16_gflops": peak["bf16_gflops"],
        "matmul_peak_fp32_gflops": peak["fp32_gflops"],
        "hf_tokens_per_second": hf_tps,
        "bertflow_tokens_per_second": ours_tps,
        "bertflow_auto_tokens_per_second": auto["tokens_per_second"],
        "repeats": REPEATS,
        "runs": runs,
    }
    report("pretrain", result)


if __name__ == "__main__":
    main()
