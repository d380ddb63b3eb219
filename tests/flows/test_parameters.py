"""Each flow takes a stage's settings as one object generated from that stage's config dataclass: every field of the
config shows in the flow's parameter schema (what Prefect validates runs against and the run form renders) with its
type, default, choices and bounds, unless the flow wires it itself; a default has one home, the dataclass (or the
sample profile, for the pipeline)."""

import dataclasses
import typing

import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt
from prefect.exceptions import ParameterTypeError
from prefect.flows import load_flow_from_entrypoint

from bert_core.config import SEED, _arms, _hints, _unwrap, field_choices, nested_config
from bert_core.downstream.classification import FinetuneConfig
from bert_core.examples.generation import ExamplesConfig
from bert_core.ingest.corpus import IngestConfig
from bert_core.training.pretrain import PretrainConfig
from deployments import PREFECT_YAML
from flows.parameters import CONTINUED_PROFILE, SAMPLE_PROFILE, STAGES
from tests.conftest import REPO

# flow -> {parameter: (stage, its profile, fields the flow wires beyond the stage's own)}
FLOWS = {
    "flows/ingest.py:ingest_flow": {"ingest": ("ingest", None, ())},
    "flows/examples.py:examples_flow": {"examples": ("examples", None, ())},
    "flows/pretrain.py:pretrain_flow": {"pretrain": ("pretrain", None, ())},
    "flows/finetune.py:finetune_flow": {"finetune": ("finetune", None, ())},
    "flows/suite.py:suite_flow": {"suite": ("suite", None, ())},
    "flows/pipeline.py:bert_pipeline": {"ingest": ("ingest", None, ()), "examples": ("examples", SAMPLE_PROFILE, ()),
                                        "pretrain": ("pretrain", SAMPLE_PROFILE, ()),
                                        "finetune": ("finetune", SAMPLE_PROFILE, ()), "suite": ("suite", None, ())},
    # The base model decides its tokenizer, pair objective, size and architecture.
    "flows/continued_pretraining.py:continued_pretraining": {
        "ingest": ("ingest", None, ()), "examples": ("examples", None, ("tokenizer", "pair_objective")),
        "pretrain": ("pretrain", CONTINUED_PROFILE, ("preset", "architecture", "init_from")),
        "suite": ("suite", None, ())},
    "flows/task_model.py:task_model": {"finetune": ("finetune", SAMPLE_PROFILE, ())},
}
BOUND_KEYS = {Ge: ("minimum", "ge"), Gt: ("exclusiveMinimum", "gt"), Le: ("maximum", "le"), Lt: ("exclusiveMaximum", "lt")}


def _schema(entrypoint, monkeypatch):
    monkeypatch.chdir(REPO)
    return load_flow_from_entrypoint(entrypoint).parameters.model_dump()


def _resolve(spec: dict, definitions: dict) -> dict:
    """A property's object schema: its $ref, or the $ref among anyOf (an optional object)."""
    for candidate in (spec, *spec.get("anyOf", ()), *spec.get("allOf", ())):
        if "$ref" in candidate:
            return definitions[candidate["$ref"].rsplit("/", 1)[-1]]
    return spec


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _check_config(cls, schema: dict, definitions: dict, defaults: dict, wired: set[str], where: str) -> int:
    assert schema.get("additionalProperties") is False, f"{where}: unknown names are not refused"
    properties = schema["properties"]
    checked = 0
    for field in dataclasses.fields(cls):
        if field.name in wired:
            assert field.name not in properties, f"{where}.{field.name} is wired by the flow, yet a parameter"
            continue
        assert field.name in properties, f"{where}.{field.name}: a config field the flow does not take"
        spec, name = properties[field.name], f"{where}.{field.name}"
        nested = nested_config(cls, field.name)
        if nested is not None:
            checked += _check_config(nested, _resolve(spec, definitions), definitions, defaults.get(field.name) or {},
                                     set(), name)
            continue
        arms = spec.get("anyOf", [spec])
        assert all(arm.get("type") or arm.get("enum") or "const" in arm for arm in arms), f"{name} is Any: {spec}"
        expected = defaults.get(field.name, field.default)
        assert spec.get("default") == _jsonable(expected), f"{name}: default {spec.get('default')!r}, expected {expected!r}"
        choices = field_choices(cls, field.name)
        if choices:
            listed = [c for arm in arms for c in arm.get("enum", [arm["const"]] if "const" in arm else [])]
            assert listed == [c for c in choices if c is not None], f"{name}: choices {listed}, expected {choices}"
        for arm_hint in _arms(_hints(cls)[field.name]):
            _, bounds = _unwrap(arm_hint)
            for bound in bounds:
                key, attr = BOUND_KEYS[type(bound)]
                assert any(arm.get(key) == getattr(bound, attr) for arm in arms), f"{name}: no {key} in {spec}"
        checked += 1
    return checked


@pytest.mark.parametrize("entrypoint", list(FLOWS))
def test_every_config_field_is_in_the_flows_schema_with_its_type_default_choices_and_bounds(entrypoint, monkeypatch):
    schema = _schema(entrypoint, monkeypatch)
    definitions = schema.get("definitions", {})
    for parameter, (stage, profile, wired) in FLOWS[entrypoint].items():
        config, always = STAGES[stage]
        spec = _resolve(schema["properties"][parameter], definitions)
        checked = _check_config(config, spec, definitions, (profile or {}).get(stage, {}), {*always, *wired},
                                f"{entrypoint}:{parameter}")
        assert checked >= 5
        assert schema["properties"][parameter].get("description"), f"{parameter}: no description in the run form"


@pytest.mark.parametrize("entrypoint", list(FLOWS))
def test_no_flow_declares_a_config_field_again(entrypoint, monkeypatch):
    """Outside the stage objects, a flow's parameters are its own (paths, the task, the gate, the workers)."""
    wired = {name for _, always in STAGES.values() for name in always} | {"task_file"}  # the task's catalogue file
    fields = {f.name for config, _ in STAGES.values() for f in dataclasses.fields(config)} - wired
    restated = set(_schema(entrypoint, monkeypatch)["properties"]) & fields
    assert not restated, f"{entrypoint} re-declares config fields: {restated}"


def test_a_bad_value_or_an_unknown_name_is_refused_before_a_run_naming_the_field(monkeypatch):
    monkeypatch.chdir(REPO)
    for entrypoint, bad, name in (
            ("flows/pipeline.py:bert_pipeline", {"pretrain": {"max_train_steps": 0}}, "max_train_steps"),
            ("flows/pipeline.py:bert_pipeline", {"examples": {"tokenizer": {"vocab_size": 2}}}, "vocab_size"),
            ("flows/pretrain.py:pretrain_flow", {"shards_dir": "x", "pretrain": {"lerning_rate": 1e-3}}, "lerning_rate"),
            ("flows/continued_pretraining.py:continued_pretraining", {"pretrain": {"preset": "bert-mini"}}, "preset"),
            ("flows/task_model.py:task_model", {"finetune": {"truncation": "middle"}}, "truncation")):
        with pytest.raises(ParameterTypeError, match=name):
            load_flow_from_entrypoint(entrypoint).validate_parameters(bad)


def test_a_run_gives_only_what_it_changes_over_the_profile_then_the_configs_defaults():
    from bert_core.config import given
    from flows.parameters import SamplePretrain

    run = SamplePretrain(max_train_steps=7)
    values = given(run, SAMPLE_PROFILE["pretrain"])
    assert values == {**SAMPLE_PROFILE["pretrain"], "max_train_steps": 7}
    config = PretrainConfig(shards_dir="s", output_dir="o", **values)
    assert config.learning_rate == SAMPLE_PROFILE["pretrain"]["learning_rate"] and config.optimizer == "adamw"
    # nested configs merge field by field
    assert given({"tokenizer": {"lowercase": False}}, SAMPLE_PROFILE["examples"]) == {
        "tokenizer": {"vocab_size": 8192, "lowercase": False}}


def test_the_sample_profile_changes_stage_defaults_and_names_real_fields():
    for stage, values in SAMPLE_PROFILE.items():
        config = STAGES[stage][0]
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        for name, value in values.items():
            if isinstance(value, dict):
                continue  # a nested config's (parameters_model refuses a name it does not know)
            assert defaults[name] != value, f"{stage}.{name}: the profile restates the config's default"


@pytest.mark.parametrize("deployment", yaml.safe_load(PREFECT_YAML.read_text())["deployments"], ids=lambda d: d["name"])
def test_no_deployment_restates_a_default(deployment, monkeypatch):
    """deployments/prefect.yaml holds only what differs per environment."""
    schema = _schema(deployment["entrypoint"], monkeypatch)
    definitions = schema.get("definitions", {})

    def restated(given: dict, properties: dict, where: str) -> list[str]:
        found = []
        for name, value in given.items():
            spec = properties[name]
            target = _resolve(spec, definitions)
            if isinstance(value, dict) and "properties" in target:
                found += restated(value, target["properties"], f"{where}{name}.")
            elif "default" in spec and spec["default"] == value:
                found.append(f"{where}{name}={value!r}")
        return found

    assert not restated(deployment.get("parameters") or {}, schema["properties"], ""), deployment["name"]


def test_the_seed_is_one_value_for_every_stage():
    assert IngestConfig.seed == ExamplesConfig.seed == PretrainConfig.seed == FinetuneConfig.seed == SEED
    assert typing.get_type_hints(PretrainConfig)["seed"] is int


def test_every_params_example_in_the_docs_validates_against_the_pipelines_schema(monkeypatch):
    """`python -m flows.pipeline --params '{...}'` in README.md and docs/: each one is a run Prefect would accept."""
    import json
    import re

    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint("flows/pipeline.py:bert_pipeline")
    pages = [REPO / "README.md", REPO / "deployments" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    examples = [match for page in pages if page.is_file()
                for match in re.findall(r"--params '(\{.*?\})'", page.read_text(encoding="utf-8"), flags=re.S)]
    assert len(examples) >= 3, examples
    for example in examples:
        flow.validate_parameters(json.loads(example))
