"""Model presets (bert-tiny ... bert-large) and the pretraining objective.

Presets follow the BERT paper and Turc et al. 2019 ("Well-Read Students Learn Better") sizes. The objective module
wraps `BertForPreTraining` and computes the MLM head only at masked positions, as google-research/bert and NVIDIA
do: with a 30k vocabulary the full-sequence decoder would dominate the step, and the loss is identical because
unmasked positions carry no target. It is an `nn.Module` so that DDP wraps it and gradients stay synchronised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForPreTraining

PRESETS: dict[str, dict[str, int]] = {
    "bert-tiny": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2},
    "bert-mini": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4},
    "bert-small": {"num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8},
    "bert-medium": {"num_hidden_layers": 8, "hidden_size": 512, "num_attention_heads": 8},
    "bert-base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12},
    "bert-large": {"num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16},
}


def bert_config(preset: str, *, vocab_size: int, max_position_embeddings: int = 512, **overrides) -> BertConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    sizes = PRESETS[preset]
    return BertConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        intermediate_size=4 * sizes["hidden_size"],
        pad_token_id=0,
        **sizes,
        **overrides,
    )


def build_model(preset: str, *, vocab_size: int, **overrides) -> BertForPreTraining:
    return BertForPreTraining(bert_config(preset, vocab_size=vocab_size, **overrides))


class PretrainingObjective(nn.Module):
    """MLM (+ NSP/SOP when the batch has pair labels) loss and accuracy counts; the MLM head runs only where labels != -100."""

    def __init__(self, model: BertForPreTraining):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids, labels, next_sentence_label=None) -> dict[str, torch.Tensor]:
        outputs = self.model.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        sequence_output, pooled_output = outputs[0], outputs[1]
        selected = labels != -100
        targets = labels[selected]
        mlm_logits = self.model.cls.predictions(sequence_output[selected])
        nsp_logits = self.model.cls.seq_relationship(pooled_output)
        mlm_loss = F.cross_entropy(mlm_logits.float(), targets)
        if next_sentence_label is None:
            # MLM only (pair_objective "none"): the pair head takes no part, but a zero-weighted term keeps its
            # parameters in the graph so that DistributedDataParallel does not wait for their gradients.
            nsp_loss = nsp_logits.float().sum() * 0.0
            nsp_correct = torch.zeros((), dtype=torch.long, device=targets.device)
            nsp_count = torch.zeros((), dtype=torch.long, device=targets.device)
        else:
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label)
            nsp_correct = (nsp_logits.argmax(-1) == next_sentence_label).sum().detach()
            nsp_count = torch.tensor(next_sentence_label.numel(), device=targets.device)
        return {
            "loss": mlm_loss + nsp_loss,
            "mlm_loss": mlm_loss.detach(),
            "nsp_loss": nsp_loss.detach(),
            "mlm_correct": (mlm_logits.argmax(-1) == targets).sum().detach(),
            "mlm_count": torch.tensor(targets.numel(), device=targets.device),
            "nsp_correct": nsp_correct,
            "nsp_count": nsp_count,
        }
