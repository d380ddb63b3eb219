"""The GPU half of `bench/gpu.sh` (run that: it installs the pins first). On one NVIDIA GPU, from bundled data only:
1. bert-base, seq 128, bf16 autocast, fused AdamW: training tokens/s over timed steps after warm-up, and MFU =
   6 x parameters x tokens/s / the GPU's dense bf16 peak (a table of known GPUs; null when the name is unknown);
2. `bert_core pretrain` through `launch.launch_command` (1-GPU `accelerate launch`) on shards built here from the
   bundled sample: its summary's tokens/s, precision and the optimizer it used;
3. `bert_core.downstream.finetune` on the SST-2 sample from that run's final/, on CUDA.
Prints one JSON line last. `BERTFLOW_GPU_CHECK_ON_CPU=1` runs the same code on a CPU at toy sizes (to check the
script itself; its figures mean nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense bf16 tensor-core peak, FLOP/s, by a substring of torch.cuda.get_device_name() (vendor data sheets, SXM
# parts; PCIe parts run lower clocks: their MFU here reads high by that ratio).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "B200": 2250e12}


def peak_flops(name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def throughput(preset: str, vocab_size: int, batch: int, steps: int, device: str) -> dict:
    import torch

    from bert_core.training.model import build_model
    from bert_core.training.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model(preset, vocab_size=vocab_size).to(device)
    optimizer = build_optimizer(model, name="adamw", lr=1e-4, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6)
    ids = torch.randint(5, vocab_size, (batch, 128), device=device)
    labels = torch.full_like(ids, -100)
    labels[:, ::7] = ids[:, ::7]  # ~15% of positions predicted
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                  labels=labels, next_sentence_label=torch.zeros(batch, dtype=torch.long, device=device))

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return {"preset": preset, "parameters": params, "batch": batch, "seq": 128, "steps": steps,
            "tokens_per_second": batch * 128 * steps / seconds,
            "fused_adamw": bool(optimizer.defaults.get("fused")), "peak_memory_gb":
            torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def main() -> None:
    import torch

    on_cpu = os.environ.get("BERTFLOW_GPU_CHECK_ON_CPU") == "1"
    if not torch.cuda.is_available() and not on_cpu:
        print(json.dumps({"gpu": None, "error": "torch sees no CUDA device (torch.cuda.is_available() is False); "
                          f"torch {torch.__version__}, CUDA build {torch.version.cuda}"}))
        sys.exit(2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)"
    preset, batch, steps, train_steps = ("bert-base", 128, 30, 120) if device == "cuda" else ("bert-tiny", 8, 3, 6)
    from bert_core.examples.generation import ExamplesConfig, generate_examples
    from bert_core.downstream.classification import FinetuneConfig, finetune
    from bert_core.downstream.catalogue import get_task
    from bert_core.ingest.cleaning import CleaningConfig
    from bert_core.ingest.dedup import DedupConfig
    from bert_core.ingest.corpus import IngestConfig, ingest_corpus
    from bert_core.training.launch import launch_command, launch_env
    from bert_core.training.pretrain import PretrainConfig
    from bert_core.examples.tokenizer import TokenizerConfig
    from bert_core import stage

    result: dict = {"gpu": name, "torch": torch.__version__, "cuda": torch.version.cuda}
    work = Path(tempfile.mkdtemp(prefix="bertflow-gpu-"))
    started = time.perf_counter()
    # The regex splitter and no near dedup: the fewest packages beyond torch's (a GPU image may lack the others).
    documents = ingest_corpus(IngestConfig(validation_fraction=0.1, cleaning=CleaningConfig(sentence_splitter="regex"),
                                           dedup=DedupConfig(near=False)), work / "ingest")
    shards = generate_examples(ExamplesConfig(max_seq_length=128, tokenizer=TokenizerConfig(vocab_size=8192)),
                               documents, work / "examples")
    result["data_seconds"] = time.perf_counter() - started

    measured = throughput(preset, 30522, batch, steps, device)
    peak = peak_flops(name)
    measured["mfu"] = 6 * measured["parameters"] * measured["tokens_per_second"] / peak if peak else None
    measured["peak_bf16_flops"] = peak
    result["throughput"] = measured

    config = PretrainConfig(shards_dir=str(shards), output_dir=str(work / "pretrain"), preset=preset,
                            per_device_train_batch_size=batch, learning_rate=1e-4, num_warmup_steps=10,
                            max_train_steps=train_steps, eval_steps=train_steps, checkpointing_steps=train_steps,
                            logging_steps=10, mixed_precision="bf16" if device == "cuda" else "no")
    config_path = work / "pretrain.json"
    stage.write_json(config_path, config)
    command = launch_command(config_path, config)
    started = time.perf_counter()
    launched = subprocess.run(command, env=launch_env(config), capture_output=True, text=True, cwd=REPO)
    if launched.returncode != 0:
        result["launch_error"] = launched.stderr[-2000:]
    else:
        summary = stage.read_json(work / "pretrain" / "summary.json")
        result["launch"] = {"command": " ".join(command[1:6]) + " ...", "seconds": time.perf_counter() - started,
                            "steps": summary["steps"], "mixed_precision": summary["mixed_precision"],
                            "tokens_per_second": summary["train_tokens"] / summary["train_seconds"],
                            "eval_mlm_loss": summary.get("eval_mlm_loss")}
        train_file, validation_file = get_task("sst2").files()
        started = time.perf_counter()
        tuned = finetune(FinetuneConfig(model_name_or_path=summary["final_dir"], train_file=train_file,
                                        validation_file=validation_file, output_dir=str(work / "finetune"),
                                        max_train_steps=60 if device == "cuda" else 4, learning_rate=5e-5,
                                        mixed_precision="bf16" if device == "cuda" else "no"))
        result["finetune"] = {"seconds": time.perf_counter() - started, "device": device,
                              **{k: v for k, v in tuned.items() if isinstance(v, (int, float, str))}}
    print(json.dumps(result))
    sys.exit(0 if "launch" in result else 1)


if __name__ == "__main__":
    main()
