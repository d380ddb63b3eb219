"""What a registered model of each kind takes and gives (`pyfunc_model`): its MLflow signature and one example input.

The one home of the example inputs: the registered model's input example, the model card's "Use" line and the
pipeline summary's predict command all come from `EXAMPLES`.
"""

from __future__ import annotations

from typing import Any

from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

# kind (with " pairs" for sentence-pair classifiers) -> a list of texts, or columns of a DataFrame
EXAMPLES: dict[str, list[str] | dict[str, list[str]]] = {
    "classifier": ["a gorgeous, witty film"],
    "classifier pairs": {"text": ["The company said profits rose."],
                         "text_pair": ["Profits went up, the company said."]},
    "token-classifier": ["Alice Smith flew from Paris to Berlin ."],
    "question-answering": {"question": ["Who ruled Normandy?"],
                           "context": ["Normandy was ruled by Rollo, a Viking leader."]},
    "pretrained": {"text": ["the [MASK] of the film"]},
}


def _key(kind: str, pairs: bool) -> str:
    key = f"{kind} pairs" if kind == "classifier" and pairs else kind
    if key not in EXAMPLES:
        raise ValueError(f"unknown model kind {kind!r}; one of {sorted({k.split()[0] for k in EXAMPLES})}")
    return key


def example_input(kind: str, pairs: bool = False) -> Any:
    """The example as `predict` takes it: a list of texts or a DataFrame."""
    example = EXAMPLES[_key(kind, pairs)]
    if isinstance(example, dict):
        import pandas as pd

        return pd.DataFrame(example)
    return list(example)


def example_source(kind: str, pairs: bool = False) -> str:
    """The example as Python source (`pd` is pandas): for the model card and the pipeline summary."""
    example = EXAMPLES[_key(kind, pairs)]
    return f"pd.DataFrame({example!r})" if isinstance(example, dict) else repr(example)


def signature(kind: str, pairs: bool = False) -> tuple[ModelSignature, Any]:
    """The model signature and input example of a pyfunc model of this kind."""
    example = example_input(kind, pairs)
    if kind == "question-answering":
        inputs = Schema([ColSpec("string", "question"), ColSpec("string", "context")])
        outputs = Schema([ColSpec("string", "answer"), ColSpec("long", "start"), ColSpec("double", "score")])
        return ModelSignature(inputs=inputs, outputs=outputs), example
    if kind == "classifier":
        outputs = Schema([ColSpec("string", "label"), ColSpec("long", "label_id"), ColSpec("double", "score")])
        if pairs:
            inputs = Schema([ColSpec("string", "text"), ColSpec("string", "text_pair")])
            return ModelSignature(inputs=inputs, outputs=outputs), example
        # One unnamed string column: accepts a list of raw strings, one string, or a DataFrame with a text column.
        return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=outputs), example
    if kind == "token-classifier":
        entity = Object([Property("type", "string"), Property("text", "string"), Property("start_word", "long"),
                         Property("end_word", "long")])
        outputs = Schema([ColSpec(Array("string"), "words"), ColSpec(Array("string"), "tags"),
                          ColSpec(Array(entity), "entities")])
        return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=outputs), example
    # pretrained. Named columns: nsp reads `text_pair`. The outputs are the task's (params): fill-mask `tokens`
    # and `scores`, nsp `is_next_probability`, embed `vector` and `tokens`; each column is there for some tasks.
    inputs = Schema([ColSpec("string", "text"), ColSpec("string", "text_pair", required=False)])
    outputs = Schema([ColSpec(Array("string"), "tokens", required=False),
                      ColSpec(Array("double"), "scores", required=False),
                      ColSpec("double", "is_next_probability", required=False),
                      ColSpec(Array("double"), "vector", required=False)])
    params = ParamSchema([ParamSpec("task", "string", "fill-mask"), ParamSpec("pooling", "string", "mean")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params), example
