import logging

import pytest
import torch

from bert_core.training.model import PRESETS, PretrainingObjective, build_model, load_with_task_head, model_config


@pytest.mark.parametrize("preset,layers,hidden,heads", [
    ("bert-tiny", 2, 128, 2), ("bert-mini", 4, 256, 4), ("bert-small", 4, 512, 8),
    ("bert-medium", 8, 512, 8), ("bert-base", 12, 768, 12), ("bert-large", 24, 1024, 16),
])
def test_presets(preset, layers, hidden, heads):
    config = model_config(preset, vocab_size=30522)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (layers, hidden, heads)
    assert config.intermediate_size == 4 * hidden
    assert set(PRESETS) >= {preset}


def test_bert_base_has_the_published_size():
    assert 109e6 < build_model("bert-base", vocab_size=30522).num_parameters() < 111e6


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset"):
        model_config("bert-huge", vocab_size=100)


def test_objective_equals_the_full_head_loss():
    """Computing the MLM head only at masked positions gives exactly BertForPreTraining's own loss."""
    torch.manual_seed(0)
    model = build_model("bert-tiny", vocab_size=500).eval()
    input_ids = torch.randint(5, 500, (4, 24))
    labels = torch.full_like(input_ids, -100)
    labels[:, [3, 7, 11]] = torch.randint(5, 500, (4, 3))
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
             "token_type_ids": torch.zeros_like(input_ids)}
    nsp = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        reference = model(**batch, labels=labels, next_sentence_label=nsp).loss
        ours = PretrainingObjective(model)(**batch, labels=labels, next_sentence_label=nsp)
    assert torch.allclose(ours["loss"], reference, atol=1e-5)
    assert int(ours["mlm_count"]) == 12 and int(ours["nsp_count"]) == 4


def test_models_use_scaled_dot_product_attention():
    from bert_core.training.model import build_model

    assert build_model("bert-tiny", vocab_size=100).config._attn_implementation == "sdpa"


def test_a_new_task_head_is_one_log_line_not_a_load_report(tmp_path, caplog, capsys):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    build_model("bert-tiny", vocab_size=64).save_pretrained(tmp_path / "pretrained")
    with caplog.at_level(logging.INFO, logger="bert_core.training.model"):
        model = load_with_task_head(AutoModelForSequenceClassification, tmp_path / "pretrained", num_labels=3)
    assert model.classifier.out_features == 3
    out = capsys.readouterr()
    assert "LOAD REPORT" not in out.out + out.err + caplog.text
    [line] = [r for r in caplog.records if r.name == "bert_core.training.model"]
    assert line.levelno == logging.INFO
    assert "newly initialised: classifier.bias, classifier.weight" in line.getMessage()
    assert "checkpoint weights not used: " in line.getMessage() and "cls." in line.getMessage()

    # Encoder weights missing from the checkpoint are not expected: that stays a warning.
    pretrained = build_model("bert-tiny", vocab_size=64)
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("bert.encoder.layer.1.")}
    pretrained.save_pretrained(tmp_path / "partial", state_dict=state)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bert_core.training.model"):
        load_with_task_head(AutoModelForTokenClassification, tmp_path / "partial", num_labels=2)
    [line] = [r for r in caplog.records if r.name == "bert_core.training.model"]
    assert line.levelno == logging.WARNING and "bert.encoder.layer.1." in line.getMessage()
