"""`python -m bert_core predict` as a user runs it: fill-mask, NSP probability, classification, embeddings."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bert_core.ingest.sources import SAMPLE_DIR
from tests.conftest import REPO


def _predict(*args):
    out = subprocess.run([sys.executable, "-m", "bert_core", "--log-level", "WARNING", "predict", *map(str, args)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_fill_mask_and_next_sentence(pretrained):
    model = pretrained["final_dir"]
    (result,) = _predict("--model", model, "--task", "fill-mask", "--text", "the [MASK] sat on the [MASK] .",
                         "--top-k", 3)
    assert len(result["masks"]) == 2 and all(len(guesses) == 3 for guesses in result["masks"])
    scores = [g["score"] for g in result["masks"][0]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    rows = _predict("--model", model, "--task", "nsp", "--text", "the queen walked in .", "--pair", "she sat down .",
                    "--text", "it rained .", "--pair", "prices rose sharply .")
    assert len(rows) == 2 and all(0 <= r["is_next_probability"] <= 1 for r in rows)


def test_classification_of_texts_and_pairs(pretrained, tmp_path):
    from bert_core.downstream.classification import FinetuneConfig, finetune

    summary = finetune(FinetuneConfig(
        model_name_or_path=pretrained["final_dir"], train_file=str(SAMPLE_DIR / "mrpc" / "train.tsv"),
        validation_file=str(SAMPLE_DIR / "mrpc" / "dev.tsv"), output_dir=str(tmp_path / "mrpc"),
        text_column="#1 String", text_pair_column="#2 String", label_column="Quality",
        label_names=("not_paraphrase", "paraphrase"), max_seq_length=64, max_train_steps=4))
    rows = _predict("--model", summary["final_dir"], "--task", "classify", "--input", SAMPLE_DIR / "mrpc" / "dev.tsv",
                    "--text-column", "#1 String", "--pair-column", "#2 String")
    assert len(rows) == 408
    for row in rows[:5]:
        assert row["label"] in {"not_paraphrase", "paraphrase"}
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-4)


def test_embeddings_are_contextual(pretrained, tmp_path):
    from bert_core.downstream.predict import token_vectors

    (info,) = _predict("--model", pretrained["final_dir"], "--task", "embed", "--output", tmp_path / "vectors",
                       "--text", "she sat on the river bank .", "--text", "he robbed the bank downtown .")
    pooled = np.load(info["pooled"])
    assert pooled.shape == (2, info["hidden_size"]) and np.isfinite(pooled).all()
    (tokens_a, matrix_a), (tokens_b, matrix_b) = token_vectors(info["tokens"], info["hidden_size"])
    for tokens, matrix in ((tokens_a, matrix_a), (tokens_b, matrix_b)):
        assert matrix.shape == (len(tokens), info["hidden_size"]) and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    # "bank" (whatever its pieces in this small vocabulary) and "the" occur in both texts: each piece gets a
    # different vector in each context.
    shared = [t for t in tokens_a[1:-1] if t in tokens_b[1:-1]]
    assert "the" in shared and len(shared) >= 2
    for token in shared:
        assert not np.allclose(matrix_a[tokens_a.index(token)], matrix_b[tokens_b.index(token)]), token
