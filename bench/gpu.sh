#!/usr/bin/env bash
# The prepared GPU check (issue 16): `bash bench/gpu.sh` from the source tree on a machine with one NVIDIA GPU.
# Installs the project's pins into its own venv (pip's default torch on Linux x86_64 is a CUDA build), builds small
# shards from the bundled sample, then (bench/gpu.py): bert-base seq-128 bf16 pretraining throughput and MFU against
# the GPU's bf16 peak, fused AdamW on CUDA, a 1-GPU `accelerate launch` through bert_core.training.launch.launch_command, and
# the fine-tuning path on CUDA. Prints one JSON line last; about 3-5 minutes. Exits 2 with a message without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "GPU"; then
    echo '{"gpu": null, "error": "no NVIDIA GPU here (nvidia-smi finds none): run bench/gpu.sh on a GPU machine"}'
    exit 2
fi
VENV="${BERTFLOW_GPU_VENV:-/tmp/bertflow-gpu-venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/pip" install -q -e . >"$VENV.install.log" 2>&1; then
    tail -5 "$VENV.install.log"
    echo '{"gpu": "unknown", "error": "pip install -e . failed (no package index here?): on an offline machine, download the project'"'"'s wheels where an index answers (pip download -d .whl .), carry them, and pip install --no-index --find-links .whl -e ."}'
    exit 3
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 BERTFLOW_HOME="${BERTFLOW_HOME:-/tmp/bertflow-gpu-home}"
exec "$VENV/bin/python" bench/gpu.py "$@"
