"""Checks that every config dataclass runs in `__post_init__`, so flows, the CLI and library callers get the same
errors: each field's value against its type hint, then the ranges and choices the config states.

A config built from JSON (`stage.config_from_dict`) or by a flow is checked here before any work starts, so a
`"max_train_steps": "60"` or a batch size of 0 is one clear `ConfigError` naming the config, the field, the value
and what was expected, instead of a traceback from deep inside a stage. Types are read from the annotations, so a
new field is checked without a new line here.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import lru_cache
from typing import Any

# The default random seed of every stage (ingest's split, example generation, training, fine-tuning): one value, so a
# pipeline's `seed` gives the run every stage would have had on its own with that seed.
SEED = 42


class ConfigError(ValueError):
    """A config value of the wrong type or out of range (a user error: the CLI prints it in one line)."""


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list, each {_describe(args[0])}" if len(args) == 2 and args[1] is Ellipsis else "a list"
    if origin in (dict, list):
        return {dict: "an object", list: "a list"}[origin]
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint in names:
        return names[hint]
    if dataclasses.is_dataclass(hint):
        return f"an object of {hint.__name__} options"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args)))
    if origin is not None:
        return isinstance(value, origin)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a hint this checker does not know: not guessed at


def check_fields(config: Any) -> None:
    """Every field's value against its annotation; an int where a float is declared becomes that float, a list
    where a tuple is declared that tuple."""
    cls = type(config)
    for field in dataclasses.fields(config):
        hint = _hints(cls).get(field.name, Any)
        value = getattr(config, field.name)
        if isinstance(value, list) and typing.get_origin(hint) is not list:
            value = tuple(value)  # JSON and flows give lists; configs hold tuples so that they stay hashable
            object.__setattr__(config, field.name, value)
        if not _matches(value, hint):
            got = f"{value!r} ({type(value).__name__})"
            if isinstance(value, str) and typing.get_origin(hint) is tuple:
                got += ", a single string where a list is expected"
            raise ConfigError(f"{cls.__name__}.{field.name} is {got}; expected {_describe(hint)}")
        if hint is float and isinstance(value, int):
            object.__setattr__(config, field.name, float(value))


def check_range(config: Any, name: str, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """`name` lies in the stated interval (None: unbounded on that side; `*_open`: the bound itself excluded)."""
    value = getattr(config, name)
    if value is None:
        return
    bad = (low is not None and (value < low or (low_open and value == low))) or \
          (high is not None and (value > high or (high_open and value == high)))
    if bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ConfigError(f"{type(config).__name__}.{name} is {value!r}; expected a value {' and '.join(b for b in (lo, hi) if b)}")


def check_positive(config: Any, *names: str) -> None:
    for name in names:
        check_range(config, name, low=0, low_open=True)


def check_non_negative(config: Any, *names: str) -> None:
    for name in names:
        check_range(config, name, low=0)


def check_fraction(config: Any, *names: str) -> None:
    for name in names:
        check_range(config, name, low=0, high=1)


def check_choice(config: Any, name: str, choices: typing.Iterable[Any]) -> None:
    value, choices = getattr(config, name), tuple(choices)
    if value not in choices:
        raise ConfigError(f"{type(config).__name__}.{name} is {value!r}; expected one of {', '.join(map(repr, choices))}")


# "auto": bf16 where the device runs it natively and faster, else fp32 (bert_core.training.hardware.resolve_mixed_precision).
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


def check_training_fields(config: Any) -> None:
    """The checks every fine-tuning config (sequence, token, QA) shares: its fields' types, then the ranges of the
    fields of the shared training loop (`finetune.fit`)."""
    check_fields(config)
    check_range(config, "max_seq_length", low=8)
    check_positive(config, "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                   "num_train_epochs", "max_train_steps", "eval_steps", "num_threads")
    check_non_negative(config, "learning_rate", "weight_decay", "max_grad_norm", "early_stopping_patience")
    check_fraction(config, "warmup_ratio")
    check_choice(config, "mixed_precision", MIXED_PRECISION)
