import pytest
import torch

from bert_core.model import PRESETS, PretrainingObjective, model_config, build_model


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
    from bert_core.model import build_model

    assert build_model("bert-tiny", vocab_size=100).config._attn_implementation == "sdpa"
