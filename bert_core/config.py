"""Checks that every config dataclass runs in `__post_init__`, so flows, the CLI and library callers get the same
errors: each field's value against its type hint, then the ranges and choices the config states.

A config built from JSON (`stage.config_from_dict`) or by a flow is checked here before any work starts, so a
`"max_train_steps": "60"` or a batch size of 0 is one clear `ConfigError` naming the config, the field, the value
and what was expected, instead of a traceback from deep inside a stage. Types, choices (`Literal`) and bounds
(`Annotated[int, Gt(0)]`, the aliases below) are read from the annotations, so a new field is checked without a new
line here, and the same annotations give the flows' parameter schemas (`parameters_model`) and the CLI's help.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import math
import textwrap
import tokenize
import types
import typing
from functools import lru_cache
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt

# The default random seed of every stage (ingest's split, example generation, training, fine-tuning): one value, so a
# pipeline's `seed` gives the run every stage would have had on its own with that seed.
SEED = 42


class ConfigError(ValueError):
    """A config value of the wrong type or out of range (a user error: the CLI prints it in one line)."""


# A field's bounds are part of its annotation, so that the checks below, the flows' parameter schemas (pydantic reads
# the same `annotated_types` bounds) and the CLI's help all read them from one place.
PositiveInt = Annotated[int, Gt(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeInt = Annotated[int, Ge(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
Fraction = Annotated[float, Ge(0), Le(1)]  # a share, 0 to 1
OpenFraction = Annotated[float, Ge(0), Lt(1)]  # a share below 1 (a held-out fraction, Adam's betas)
SeqLength = Annotated[int, Ge(8)]  # tokens per example, [CLS] and [SEP]s included
# "auto": bf16 where the device runs it natively and faster, else fp32 (bert_core.training.hardware.resolve_mixed_precision).
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
MixedPrecision = Literal[MIXED_PRECISION]


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _unwrap(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """(the type, its bounds) of an annotation: `Annotated[int, Gt(0)]` -> (int, (Gt(0),))."""
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
        return base, tuple(m for m in meta if isinstance(m, (Ge, Gt, Le, Lt)))
    return hint, ()


def _arms(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def bounds_text(bounds: tuple[Any, ...]) -> str:
    """`(Ge(0), Lt(1))` -> ">= 0 and < 1"."""
    signs = {Ge: (">=", "ge"), Gt: (">", "gt"), Le: ("<=", "le"), Lt: ("<", "lt")}
    return " and ".join(f"{signs[type(b)][0]} {getattr(b, signs[type(b)][1])}" for b in bounds)


def _describe(hint: Any) -> str:
    hint, bounds = _unwrap(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if bounds:
        return f"{_describe(hint)} {bounds_text(bounds)}"
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
    hint = _unwrap(hint)[0]
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


def _within(value: Any, bound: Any) -> bool:
    if isinstance(bound, Ge):
        return value >= bound.ge
    if isinstance(bound, Gt):
        return value > bound.gt
    if isinstance(bound, Le):
        return value <= bound.le
    return value < bound.lt


def check_fields(config: Any) -> None:
    """Every field's value against its annotation (type, choices, then bounds); an int where a float is declared
    becomes that float, a list where a tuple is declared that tuple."""
    cls = type(config)
    for field in dataclasses.fields(config):
        hint = _hints(cls).get(field.name, Any)
        value = getattr(config, field.name)
        if isinstance(value, list) and typing.get_origin(_unwrap(hint)[0]) is not list:
            value = tuple(value)  # JSON and flows give lists; configs hold tuples so that they stay hashable
            object.__setattr__(config, field.name, value)
        arm = next((a for a in _arms(hint) if _matches(value, a)), None)
        if arm is None:
            literal = next((a for a in _arms(hint) if typing.get_origin(a) is typing.Literal), None)
            if literal is not None and isinstance(value, str):  # a choice of the right type, not among the choices
                raise ConfigError(f"{cls.__name__}.{field.name} is {value!r}; expected {_describe(hint)}")
            got = f"{value!r} ({type(value).__name__})"
            if isinstance(value, str) and typing.get_origin(_unwrap(hint)[0]) is tuple:
                got += ", a single string where a list is expected"
            raise ConfigError(f"{cls.__name__}.{field.name} is {got}; expected {_describe(hint)}")
        base, bounds = _unwrap(arm)
        if base is float and isinstance(value, int):
            value = float(value)
            object.__setattr__(config, field.name, value)
        if not all(_within(value, b) for b in bounds):
            raise ConfigError(f"{cls.__name__}.{field.name} is {value!r}; expected a value {bounds_text(bounds)}")


@lru_cache(maxsize=None)
def field_help(cls: type) -> dict[str, str]:
    """Each field's line of meaning: the comment after it on its line, else the comment block just above it, read
    from the dataclass's source (its base classes' too), so that the comment a reader sees is what the CLI's help,
    the flows' parameter schemas and the Prefect run form show."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        comments = {tok.start[0]: (tok.string.lstrip("#").strip(), tok.line.lstrip().startswith("#"))
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
        for node in ast.parse(source).body[0].body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            text, alone = comments.get(node.end_lineno, ("", True))
            if alone:  # no comment after the field: the block of whole-line comments above it
                block, line = [], node.lineno - 1
                while line in comments and comments[line][1]:
                    block.insert(0, comments[line][0])
                    line -= 1
                text = " ".join(block)
            if text:
                helps[node.target.id] = text
    return helps


def field_choices(cls: type, name: str) -> tuple[Any, ...]:
    """The values a field may take when its annotation lists them (a `Literal`), else ()."""
    return tuple(v for arm in _arms(_hints(cls)[name]) if typing.get_origin(_unwrap(arm)[0]) is typing.Literal
                 for v in typing.get_args(_unwrap(arm)[0]))


def describe_field(cls: type, name: str) -> str:
    """What a field takes, in words: "an integer > 0 or null"."""
    return _describe(_hints(cls)[name])


def nested_config(cls: type, name: str) -> type | None:
    """The config class a field holds (`ExamplesConfig.tokenizer` -> TokenizerConfig), else None."""
    return next((a for a in _arms(_hints(cls)[name]) if dataclasses.is_dataclass(a)), None)


def parameters_model(cls: type, *, exclude: typing.Iterable[str] = (), defaults: dict | None = None,
                     name: str | None = None) -> type:
    """A pydantic model of a config dataclass's fields but `exclude` (what the caller wires: paths, run ids): the
    type a flow takes a stage's settings as, so that Prefect checks a run's values against the config's own types,
    choices and bounds before it starts, refuses unknown names, and shows each field in the run form with its
    default (`defaults` over the dataclass's) and its comment. Nested configs become nested models."""
    from pydantic import ConfigDict, Field, create_model  # lazy: only the flows build schemas

    defaults, exclude = defaults or {}, set(exclude)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        hint, helps = _hints(cls)[field.name], field_help(cls)
        nested = nested_config(cls, field.name)
        if nested is not None:
            model = parameters_model(nested, defaults=defaults.get(field.name))
            if field.default is None:
                fields[field.name] = (model | None, Field(default=None, description=helps.get(field.name)))
            else:
                fields[field.name] = (model, Field(default_factory=model, description=helps.get(field.name)))
            continue
        default = defaults.get(field.name, field.default)
        if default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name} has no default: the flow must wire it (exclude it)")
        fields[field.name] = (hint, Field(default=default, description=helps.get(field.name)))
    unknown = set(defaults) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"defaults for {cls.__name__} name no field of it: {sorted(unknown)}")
    return create_model(name or f"{cls.__name__.removesuffix('Config')}Parameters",
                        __config__=ConfigDict(extra="forbid", title=name or cls.__name__),
                        __doc__=config_doc(cls), **fields)


def config_doc(cls: type) -> str | None:
    """A config class's docstring (None where it has only the signature dataclasses writes)."""
    doc = (cls.__doc__ or "").strip()
    return None if not doc or doc.startswith(f"{cls.__name__}(") else inspect.cleandoc(doc)


def given(parameters: Any, defaults: dict | None = None) -> dict[str, Any]:
    """The values a run set in a `parameters_model` object (or a dict of them), over `defaults`, nested configs
    merged field by field: what a flow hands its stage config, which fills in the rest from its own defaults."""
    if parameters is None:
        values: dict[str, Any] = {}
    elif isinstance(parameters, dict):
        values = parameters
    else:
        values = parameters.model_dump(exclude_unset=True)
    merged = dict(defaults or {})
    for key, value in values.items():
        merged[key] = given(value, merged.get(key)) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(name, what it takes and its default, its line of meaning) for every field of a config, nested configs'
    fields dotted (`tokenizer.vocab_size`): the CLI's help, from the same annotations and comments as the checks."""
    rows = []
    for field in dataclasses.fields(cls):
        nested = nested_config(cls, field.name)
        if nested is not None:
            rows += describe_fields(nested, f"{prefix}{field.name}.")
            continue
        default = "required" if field.default is dataclasses.MISSING else f"default {field.default!r}"
        rows.append((prefix + field.name, f"{describe_field(cls, field.name)}; {default}",
                     field_help(cls).get(field.name, "")))
    return rows

