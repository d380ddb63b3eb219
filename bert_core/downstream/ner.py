"""Token classification (named-entity recognition) on CoNLL-format files, scored with entity-level F1 (seqeval).

Input: one token per line with the tag in the last column (`word POS chunk NER` for CoNLL-2003), blank lines
between sentences, `-DOCSTART-` lines ignored; IOB2 tags. Words are split into WordPieces; the label of a word goes
to its first piece and the other pieces are ignored by the loss (-100), and a word's prediction is its first
piece's. Words cut off by max_seq_length are predicted `O` (and still count in the F1). The training loop is the
one of sequence classification (`finetune.fit`): best dev model kept, early stopping, Accelerate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

from bert_core import stage
from bert_core.config import PositiveInt
from bert_core.downstream.finetune import TrainingConfig, fit, run_key, train_loader, training_accelerator
from bert_core.downstream.kinds import CONLL2003_TAGS
from bert_core.training.model import load_with_task_head, resolve_model

logger = logging.getLogger(__name__)



@dataclass(frozen=True, kw_only=True)
class NerConfig(TrainingConfig):
    label_names: tuple[str, ...] = CONLL2003_TAGS
    max_train_sentences: PositiveInt | None = None  # train on the first N sentences only (quick runs)
    metric_for_best_model: str = "f1"



def read_conll(path: str | Path) -> list[tuple[list[str], list[str]]]:
    """(words, tags) per sentence of a CoNLL file."""
    sentences, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                if words:
                    sentences.append((words, tags))
                words, tags = [], []
                continue
            fields = line.split()
            if len(fields) < 2:
                raise ValueError(f"{path}:{number}: expected 'word ... tag', got {line!r}")
            words.append(fields[0])
            tags.append(fields[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def encode_words(tokenizer, sentences: list[list[str]], tags: list[list[int]] | None, max_seq_length: int) -> list[dict]:
    """WordPiece rows with the word label on each word's first piece and -100 elsewhere (and on specials)."""
    encoded = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_seq_length)
    rows = []
    for i in range(len(sentences)):
        row = {k: encoded[k][i] for k in encoded}
        if tags is not None:
            labels, previous = [], None
            for word in encoded.word_ids(i):
                labels.append(-100 if word is None or word == previous else tags[i][word])
                previous = word
            row["labels"] = labels
        rows.append(row)
    return rows


@torch.no_grad()
def predict_tags(model, tokenizer, sentences: list[list[str]], *, max_seq_length: int = NerConfig.max_seq_length, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> list[list[str]]:
    """A tag per word (its first piece's prediction; `O` for words past max_seq_length)."""
    model.eval()
    id2label = model.config.id2label
    out: list[list[str]] = []
    for start in range(0, len(sentences), batch_size):
        chunk = sentences[start : start + batch_size]
        encoded = tokenizer(chunk, is_split_into_words=True, truncation=True, max_length=max_seq_length,
                            padding=True, return_tensors="pt")
        predicted = model(**{k: v.to(device) for k, v in encoded.items()}).logits.argmax(-1).cpu().numpy()
        for i, words in enumerate(chunk):
            tags = ["O"] * len(words)
            previous = None
            for position, word in enumerate(encoded.word_ids(i)):
                if word is not None and word != previous:
                    tags[word] = id2label[int(predicted[i, position])]
                previous = word
            out.append(tags)
    return out


def entity_metrics(true_tags: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    """Entity-level precision, recall and F1 (exact span and type, seqeval's CoNLL rules), overall and per type."""
    report = classification_report(true_tags, predicted, output_dict=True, zero_division=0)
    return {
        "f1": float(f1_score(true_tags, predicted, zero_division=0)),
        "precision": float(precision_score(true_tags, predicted, zero_division=0)),
        "recall": float(recall_score(true_tags, predicted, zero_division=0)),
        "token_accuracy": float(np.mean([t == p for ts, ps in zip(true_tags, predicted) for t, p in zip(ts, ps)])),
        "per_type_f1": {k: float(v["f1-score"]) for k, v in report.items() if not k.endswith(" avg")},
        "num_sentences": len(true_tags),
    }


def finetune_ner(config: NerConfig) -> dict[str, Any]:
    """Fine-tune a token classifier and score it on the validation file; skip when done with the same inputs."""
    output_dir = Path(config.output_dir)
    model_path = resolve_model(config.model_name_or_path)
    key = run_key(config, model_path, version=2)
    if stage.completed_stage(output_dir, key):
        return stage.read_json(output_dir / "summary.json")
    accelerator = training_accelerator(config)
    set_seed(config.seed)
    label_ids = {name: i for i, name in enumerate(config.label_names)}
    train = read_conll(config.train_file)[: config.max_train_sentences]
    dev = read_conll(config.validation_file)
    for name, data in (("train", train), ("validation", dev)):
        unknown = sorted({t for _, tags in data for t in tags if t not in label_ids})
        if unknown:
            raise ValueError(f"{name} file has tags {unknown[:5]} that are not in label_names {list(config.label_names)}")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = load_with_task_head(AutoModelForTokenClassification, model_path, num_labels=len(config.label_names),
                                id2label=dict(enumerate(config.label_names)), label2id=label_ids)
    rows = encode_words(tokenizer, [w for w, _ in train], [[label_ids[t] for t in tags] for _, tags in train],
                        config.max_seq_length)
    loader = train_loader(rows, config, DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8))
    dev_words, dev_tags = [w for w, _ in dev], [t for _, t in dev]

    def dev_metrics(model) -> dict[str, Any]:
        predicted = predict_tags(model, tokenizer, dev_words, max_seq_length=config.max_seq_length,
                                 batch_size=config.per_device_eval_batch_size, device=accelerator.device)
        return entity_metrics(dev_tags, predicted)

    def loss_of(model, batch) -> torch.Tensor:
        return model(**batch).loss

    return fit(accelerator, model, tokenizer, loader, loss_of=loss_of, dev_metrics=dev_metrics, config=config,
               output_dir=output_dir, key=key, stage_name="finetune-ner", summary={"train_sentences": len(train)},
               description={"label_names": config.label_names})
