"""What the flows' parameters may hold: the types Prefect validates a run against and renders as the run form's
fields, the bundled sample's profile, and how the pipeline takes per-stage overrides."""

import inspect
import typing
from typing import Annotated, Literal

from pydantic import ConfigDict, Field
from typing_extensions import TypedDict  # pydantic needs this one, not typing's, before Python 3.12

from bert_core.config import MIXED_PRECISION
from bert_core.examples.generation import PAIR_OBJECTIVES
from bert_core.training.model import ARCHITECTURES, PRESETS

# Parameter types shared by the flows: Prefect validates runs against them and renders them as UI form fields
# (choices as drop-downs, bounds checked before a run starts); each flow's docstring `Args:` gives the descriptions.
# The choices are the library's own lists; the stage configs check every value again (bert_core.config).
Preset = Literal[tuple(PRESETS)]
Architecture = Literal[ARCHITECTURES]
MixedPrecision = Literal[MIXED_PRECISION]
PairObjective = Literal[PAIR_OBJECTIVES]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
SeqLength = Annotated[int, Field(ge=8, le=512)]  # ExamplesConfig's bounds; 512: BERT's position embeddings

# The bundled sample's run, a few minutes on 2 CPU cores: per stage flow, the only parameter defaults of the user
# flows that differ from the stage configs' own (tests/test_defaults.py holds every flow to that). The stage configs'
# defaults are sized for a real corpus.
SAMPLE_PROFILE: dict[str, dict[str, object]] = {
    "examples": {"vocab_size": 8192},
    "pretrain": {"learning_rate": 1e-3, "num_warmup_steps": 50, "max_train_steps": 500, "eval_steps": 100,
                 "checkpointing_steps": 100},
    "finetune": {"learning_rate": 5e-4},  # a bert-tiny fine-tunes best far above BERT-base's 5e-5
}


def stage_parameters(stage_flow, name: str, *, inputs: tuple[str, ...]):
    """A TypedDict of a stage flow's parameters but its `inputs` (what the pipeline wires): the type of the pipeline
    parameter that overrides them, so Prefect checks a run's overrides (names and values) before it starts and the
    run form shows them. The stage flow's signature stays their one home."""
    hints = typing.get_type_hints(stage_flow.fn, include_extras=True)
    fields = {p: hints[p] for p in inspect.signature(stage_flow.fn).parameters if p not in inputs}
    parameters = TypedDict(name, fields, total=False)
    parameters.__pydantic_config__ = ConfigDict(extra="forbid")
    return parameters


def stage_overrides(stage_name: str, given: dict | None) -> dict:
    """A pipeline's parameters for one stage flow: the sample profile's, then the run's own."""
    return {**SAMPLE_PROFILE.get(stage_name, {}), **(given or {})}
