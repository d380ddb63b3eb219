"""What a registered model of each kind takes and gives (`pyfunc_model`): its MLflow signature and one example input.

The example inputs live with the kinds (`bert_core.downstream.kinds.ModelKind.example`): the registered model's
input example, the model card's "Use" line and the pipeline summary's predict command all come from there. Each
model kind names its signature function here.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

from bert_core.downstream.kinds import load, model_kind


def example_input(kind: str, pairs: bool = False) -> Any:
    """The example as `predict` takes it: a list of texts or a DataFrame."""
    example = model_kind(kind).example_input(pairs)
    if isinstance(example, dict):
        return pd.DataFrame(example)
    return list(example)


def example_source(kind: str, pairs: bool = False) -> str:
    """The example as Python source (`pd` is pandas): for the model card and the pipeline summary."""
    example = model_kind(kind).example_input(pairs)
    return f"pd.DataFrame({example!r})" if isinstance(example, dict) else repr(example)


def signature(kind: str, pairs: bool = False) -> tuple[ModelSignature, Any]:
    """The model signature and input example of a pyfunc model of this kind."""
    return load(model_kind(kind).signature)(pairs), example_input(kind, pairs)


def question_answering_signature(pairs: bool = False) -> ModelSignature:
    inputs = Schema([ColSpec("string", "question"), ColSpec("string", "context")])
    outputs = Schema([ColSpec("string", "answer"), ColSpec("long", "start"), ColSpec("double", "score")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def classifier_signature(pairs: bool = False) -> ModelSignature:
    outputs = Schema([ColSpec("string", "label"), ColSpec("long", "label_id"), ColSpec("double", "score")])
    if pairs:
        inputs = Schema([ColSpec("string", "text"), ColSpec("string", "text_pair")])
        return ModelSignature(inputs=inputs, outputs=outputs)
    # One unnamed string column: accepts a list of raw strings, one string, or a DataFrame with a text column.
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=outputs)


def token_classifier_signature(pairs: bool = False) -> ModelSignature:
    entity = Object([Property("type", "string"), Property("text", "string"), Property("start_word", "long"),
                     Property("end_word", "long")])
    outputs = Schema([ColSpec(Array("string"), "words"), ColSpec(Array("string"), "tags"),
                      ColSpec(Array(entity), "entities")])
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=outputs)


def pretrained_signature(pairs: bool = False) -> ModelSignature:
    """Named columns: nsp reads `text_pair`. The outputs are the task's (params): fill-mask `tokens` and `scores`,
    nsp `is_next_probability`, embed `vector` and `tokens`; each column is there for some tasks."""
    inputs = Schema([ColSpec("string", "text"), ColSpec("string", "text_pair", required=False)])
    outputs = Schema([ColSpec(Array("string"), "tokens", required=False),
                      ColSpec(Array("double"), "scores", required=False),
                      ColSpec("double", "is_next_probability", required=False),
                      ColSpec(Array("double"), "vector", required=False)])
    params = ParamSchema([ParamSpec("task", "string", "fill-mask"), ParamSpec("pooling", "string", "mean")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)
