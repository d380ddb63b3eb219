"""The MLflow pyfunc model bertflow registers: a `save_pretrained` BERT directory behind `predict(texts)`.

MLflow logs this file as "model code" (models-from-code), so a registered model loads in a fresh process with
transformers and torch alone, without bertflow installed and without unpickling anything. `model_config["kind"]`
selects the behaviour:
- "classifier": one row per input text with `label` (name), `label_id` and `score` (probability of that label).
- "pretrained": fill-mask; one row per input text with the `top_k` predictions for its first [MASK] token.
Inputs: a DataFrame with a `text` column (or a single string column), a list of strings, or one string.
"""

from __future__ import annotations

import mlflow
import mlflow.pyfunc


def _texts(model_input) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return [str(t) for t in model_input[column].tolist()]
    return [str(t) for t in model_input]


class BertPyfuncModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch
        from transformers import AutoModelForPreTraining, AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        config = context.model_config or {}
        self.kind = config.get("kind", "classifier")
        self.max_seq_length = int(config.get("max_seq_length", 128))
        self.top_k = int(config.get("top_k", 5))
        path = context.artifacts["model_dir"]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        loader = AutoModelForSequenceClassification if self.kind == "classifier" else AutoModelForPreTraining
        self.model = loader.from_pretrained(path).eval()

    def predict(self, context, model_input, params=None):
        import pandas as pd

        texts = _texts(model_input)
        with self.torch.no_grad():
            batch = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length, padding=True,
                                   return_tensors="pt")
            if self.kind == "classifier":
                probs = self.torch.softmax(self.model(**batch).logits.float(), dim=-1)
                score, label_id = probs.max(dim=-1)
                id2label = self.model.config.id2label
                return pd.DataFrame({
                    "label": [id2label[int(i)] for i in label_id],
                    "label_id": label_id.tolist(),
                    "score": score.tolist(),
                })
            logits = self.model(**batch).prediction_logits
            rows = []
            for i in range(len(texts)):
                positions = (batch["input_ids"][i] == self.tokenizer.mask_token_id).nonzero().flatten()
                if positions.numel() == 0:
                    rows.append({"tokens": [], "scores": []})
                    continue
                probs = self.torch.softmax(logits[i, int(positions[0])].float(), dim=-1)
                top = probs.topk(self.top_k)
                rows.append({"tokens": self.tokenizer.convert_ids_to_tokens(top.indices.tolist()),
                             "scores": top.values.tolist()})
            return pd.DataFrame(rows)


mlflow.models.set_model(BertPyfuncModel())
