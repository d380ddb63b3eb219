"""The MLflow pyfunc model bertflow registers: a `save_pretrained` BERT directory behind `predict(...)`.

MLflow logs this file as "model code" (models-from-code), so a registered model loads in a fresh process with
transformers and torch alone, without bertflow installed and without unpickling anything. `model_config["kind"]`
selects the behaviour:
- "classifier": one row per input with `label` (name), `label_id` and `score` (probability of that label). Inputs:
  texts, or a DataFrame with `text` and, for sentence-pair models (MRPC, RTE), `text_pair`.
- "token-classifier" (NER): one row per text with `words` (whitespace-split), their `tags`, and `entities`
  (`{"type", "text", "start_word", "end_word"}` from the IOB2 tags).
- "question-answering": a DataFrame with `question` and `context`; one row per question with `answer`, its
  character `start` in the context and `score` (start + end logit). Long contexts are read in windows of
  `max_seq_length` tokens with `doc_stride` overlap.
- "pretrained": input a DataFrame, a list of records or a dict of lists with `text` and, for "nsp", `text_pair`;
  `params={"task": ...}` picks what the pretraining heads and encoder give:
  "fill-mask" (default): one row per text with the `top_k` predictions (`tokens`, `scores`) for its first [MASK];
  "nsp": `is_next_probability` from the next-sentence head;
  "embed": one row per text with its pooled `vector` (`pooling` "mean" or "cls") and its `tokens`.
Classifier and token-classifier texts come as a DataFrame (`text` column, else the first column), a list of
strings, or one string. The registered signature (`signatures.signature`) says the same to MLflow and its server.
Texts are encoded in one call and run through the model `batch_size` (model_config, default `BATCH_SIZE`) at a time, in
order of length, so that little of each batch is padding (`bench/predict.py` measures it against a transformers
pipeline).
"""

from __future__ import annotations

import mlflow
import mlflow.pyfunc
import pandas as pd

# The behaviours of `predict`, by the kind registration writes into model_config (the kinds themselves are
# bert_core.downstream.kinds'; this file is logged as code and loads without bertflow, so it is told, not importing).
KINDS = ("classifier", "token-classifier", "question-answering", "pretrained")
REQUIRED = ("kind", "model_class", "max_seq_length")  # written at registration (registration.pyfunc_config)
BATCH_SIZE = 64  # texts per forward pass unless model_config says otherwise


def _texts(values) -> list[str]:
    """Texts of a column; a cell holding a list is its texts (a dict of lists reaches `predict` as one such row)."""
    texts: list[str] = []
    for value in values:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
            items = value.tolist() if hasattr(value, "tolist") else value
            texts.extend([str(items)] if isinstance(items, str) else [str(t) for t in items])
        else:
            texts.append(str(value))
    return texts


def _column(model_input, name: str, *, first_if_missing: bool = False) -> list[str] | None:
    if isinstance(model_input, str):
        return [model_input] if first_if_missing else None
    if hasattr(model_input, "columns"):
        if name in model_input.columns:
            return _texts(model_input[name].tolist())
        return _texts(model_input[model_input.columns[0]].tolist()) if first_if_missing else None
    if isinstance(model_input, dict):
        value = model_input.get(name)
        return None if value is None else _texts([value])
    return _texts(model_input) if first_if_missing else None


def entities_from_tags(words: list[str], tags: list[str]) -> list[dict]:
    """Entity spans from IOB2 tags (an I- tag that does not continue its type starts a new entity)."""
    entities: list[dict] = []
    for i, tag in enumerate(tags):
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        if kind is None:
            continue
        if tag.startswith("I-") and entities and entities[-1]["type"] == kind and entities[-1]["end_word"] == i - 1:
            entities[-1]["end_word"] = i
            entities[-1]["text"] += " " + words[i]
        else:
            entities.append({"type": kind, "text": words[i], "start_word": i, "end_word": i})
    return entities


class BertPyfuncModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch  # lazy: MLflow imports this file to find the model class before it loads one
        import transformers  # lazy: as torch

        self.torch = torch
        config = context.model_config or {}
        missing = [key for key in REQUIRED if key not in config]
        if missing:
            raise ValueError(f"model_config has no {missing}; expected the {list(REQUIRED)} that bertflow's "
                             "registration writes")
        self.kind = config["kind"]
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; one of {KINDS}")
        self.max_seq_length = int(config["max_seq_length"])
        self.doc_stride = int(config.get("doc_stride", self.max_seq_length // 2))
        self.max_answer_length = int(config.get("max_answer_length", 30))
        self.top_k = int(config.get("top_k", 5))
        self.batch_size = int(config.get("batch_size", BATCH_SIZE))  # texts per forward pass, in length order
        path = context.artifacts["model_dir"]
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = getattr(transformers, config["model_class"]).from_pretrained(path).eval()

    # The hints are what MLflow passes after enforcing the signature: a DataFrame for every kind (a list or a string
    # given to a model with an unnamed string column arrives as a one-column DataFrame).
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        with self.torch.no_grad():
            if self.kind == "question-answering":
                return pd.DataFrame(self._answer(model_input))
            texts = _column(model_input, "text", first_if_missing=True)
            if self.kind == "classifier":
                return pd.DataFrame(self._classify(texts, _column(model_input, "text_pair")))
            if self.kind == "token-classifier":
                return pd.DataFrame(self._tag(texts))
            task = params.get("task", "fill-mask")
            if task == "nsp":
                pairs = _column(model_input, "text_pair")
                if pairs is None:
                    raise ValueError("task nsp needs a DataFrame with `text` and `text_pair` columns")
                return pd.DataFrame(self._next_sentence(texts, pairs))
            if task == "embed":
                return pd.DataFrame(self._embed(texts, params.get("pooling", "mean")))
            if task != "fill-mask":
                raise ValueError(f"unknown task {task!r} for a pretrained model: fill-mask, nsp or embed")
            return pd.DataFrame(self._fill_mask(texts))

    def _batches(self, encoded):
        """(indices, padded tensors) of the encoded inputs in batches of `batch_size` similar lengths, longest
        first: little of a batch is padding, and the caller puts the rows back in input order by the indices."""
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded]
        lengths = [len(ids) for ids in encoded["input_ids"]]
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        for begin in range(0, len(order), self.batch_size):
            rows = order[begin : begin + self.batch_size]
            yield rows, self.tokenizer.pad([{k: encoded[k][i] for k in keys} for i in rows], return_tensors="pt")

    def _encode(self, texts, pairs=None, **kwargs):
        return self.tokenizer(texts, pairs, truncation=True, max_length=self.max_seq_length, **kwargs)

    def _next_sentence(self, texts, pairs):
        if not hasattr(self.model, "cls"):
            raise ValueError(f"this {self.model.config.model_type} model has no next-sentence head: fill-mask or embed")
        probability = [0.0] * len(texts)
        for rows, batch in self._batches(self._encode(texts, pairs)):
            probs = self.torch.softmax(self.model(**batch).seq_relationship_logits.float(), dim=-1)
            for i, p in zip(rows, probs[:, 0].tolist()):  # label 0 = B follows A
                probability[i] = p
        return {"is_next_probability": probability}

    def _embed(self, texts, pooling):
        if pooling not in ("mean", "cls"):
            raise ValueError(f"unknown pooling {pooling!r}: mean or cls")
        out = [None] * len(texts)
        for rows, batch in self._batches(self._encode(texts)):
            hidden = self.model.base_model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
            lengths = batch["attention_mask"].sum(1).tolist()
            for j, i in enumerate(rows):
                out[i] = {"vector": vectors[j].tolist(), "tokens": self.tokenizer.convert_ids_to_tokens(
                    batch["input_ids"][j, : lengths[j]].tolist())}
        return out

    def _classify(self, texts, pairs):
        id2label = self.model.config.id2label
        labels, label_ids, scores = [None] * len(texts), [0] * len(texts), [0.0] * len(texts)
        for rows, batch in self._batches(self._encode(texts, pairs)):
            score, label_id = self.torch.softmax(self.model(**batch).logits.float(), dim=-1).max(dim=-1)
            for i, s, label in zip(rows, score.tolist(), label_id.tolist()):
                labels[i], label_ids[i], scores[i] = id2label[label], label, s
        return {"label": labels, "label_id": label_ids, "score": scores}

    def _tag(self, texts):
        words = [t.split() for t in texts]
        encoded = self._encode(words, is_split_into_words=True)
        id2label = self.model.config.id2label
        rows_out = [None] * len(texts)
        for rows, batch in self._batches(encoded):
            predicted = self.model(**batch).logits.argmax(-1).tolist()
            for j, i in enumerate(rows):
                tags, previous = ["O"] * len(words[i]), None
                for position, word in enumerate(encoded.word_ids(i)):  # unpadded; padding is on the right
                    if word is not None and word != previous:
                        tags[word] = id2label[predicted[j][position]]
                    previous = word
                rows_out[i] = {"words": words[i], "tags": tags, "entities": entities_from_tags(words[i], tags)}
        return rows_out

    def _answer(self, model_input):
        questions, contexts = _column(model_input, "question"), _column(model_input, "context")
        if questions is None or contexts is None:
            raise ValueError("question-answering input needs `question` and `context` columns")
        encoded = self.tokenizer(questions, contexts, truncation="only_second", max_length=self.max_seq_length,
                                 stride=self.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
        samples, offsets = encoded["overflow_to_sample_mapping"], encoded["offset_mapping"]
        start_rows, end_rows = [None] * len(samples), [None] * len(samples)
        for rows, batch in self._batches(encoded):  # windows, right-padded: positions are the unpadded ones
            out = self.model(**batch)
            for j, i in enumerate(rows):
                start_rows[i], end_rows[i] = out.start_logits[j].float(), out.end_logits[j].float()
        best = [{"answer": "", "start": -1, "score": float("-inf")} for _ in questions]
        for i, sample in enumerate(samples):
            context_positions = [p for p, s in enumerate(encoded.sequence_ids(i)) if s == 1]
            if not context_positions:
                continue
            lo, hi = context_positions[0], context_positions[-1] + 1
            start_logits, end_logits = start_rows[i][lo:hi], end_rows[i][lo:hi]
            scores = start_logits[:, None] + end_logits[None, :]
            n = hi - lo
            allowed = self.torch.ones(n, n, dtype=self.torch.bool).triu().tril(self.max_answer_length - 1)
            scores = scores.masked_fill(~allowed, float("-inf"))
            flat = int(scores.argmax())
            s, e = divmod(flat, n)
            score = float(scores[s, e])
            if score > best[sample]["score"]:
                start, end = offsets[i][lo + s][0], offsets[i][lo + e][1]
                best[sample] = {"answer": contexts[sample][start:end], "start": start, "score": score}
        return best

    def _fill_mask(self, texts):
        out = [None] * len(texts)
        for rows, batch in self._batches(self._encode(texts)):
            output = self.model(**batch)
            logits = output.prediction_logits if hasattr(output, "prediction_logits") else output.logits  # BERT/ModernBERT
            for j, i in enumerate(rows):
                positions = (batch["input_ids"][j] == self.tokenizer.mask_token_id).nonzero().flatten()
                if positions.numel() == 0:
                    out[i] = {"tokens": [], "scores": []}
                    continue
                top = self.torch.softmax(logits[j, int(positions[0])].float(), dim=-1).topk(self.top_k)
                out[i] = {"tokens": self.tokenizer.convert_ids_to_tokens(top.indices.tolist()),
                          "scores": top.values.tolist()}
        return out


mlflow.models.set_model(BertPyfuncModel())
