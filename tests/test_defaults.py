"""One home per parameter default: the stage config dataclass that uses it, or the sample profile.

Every flow parameter that names a field of a stage config the flow builds must default to that field's default,
to the sample profile's value (flows.SAMPLE_PROFILE, per stage flow), or to None (the stage or the task decides);
and no deployment restates a flow default, nor a stage flow's inside the pipeline's per-stage parameters
(deployments/prefect.yaml holds only what differs per environment).
"""

import inspect

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from bert_core.downstream.classification import FinetuneConfig
from bert_core.examples.generation import ExamplesConfig
from bert_core.examples.masking import MaskingConfig
from bert_core.examples.tokenizer import TokenizerConfig
from bert_core.ingest.cleaning import CleaningConfig
from bert_core.ingest.corpus import IngestConfig
from bert_core.ingest.dedup import DedupConfig
from bert_core.ingest.sources import ReadConfig
from bert_core.training.pretrain import PretrainConfig
from deployments import PREFECT_YAML
from flows.parameters import SAMPLE_PROFILE
from tests.conftest import REPO

INGEST = (IngestConfig, ReadConfig, CleaningConfig, DedupConfig)
EXAMPLES = (ExamplesConfig, TokenizerConfig, MaskingConfig)
# flow -> (the configs its parameter names belong to, the sample-profile stage its sample-sized defaults come from)
FLOWS = {
    "flows/pipeline.py:bert_pipeline": ((*INGEST, *EXAMPLES, PretrainConfig, FinetuneConfig), None),
    "flows/continued_pretraining.py:continued_pretraining": ((*INGEST, *EXAMPLES, PretrainConfig), "pretrain"),
    "flows/ingest.py:ingest_flow": (INGEST, None),
    "flows/examples.py:examples_flow": (EXAMPLES, None),
    "flows/pretrain.py:pretrain_flow": ((PretrainConfig,), None),
    "flows/finetune.py:finetune_flow": ((FinetuneConfig,), None),
    "flows/task_model.py:task_model": ((FinetuneConfig,), "finetune"),
}
STAGE_FLOWS = {"ingest": "flows/ingest.py:ingest_flow", "examples": "flows/examples.py:examples_flow",
               "pretrain": "flows/pretrain.py:pretrain_flow", "finetune": "flows/finetune.py:finetune_flow"}


def _allowed(configs, name, profile):
    values = [SAMPLE_PROFILE[profile][name]] if profile and name in SAMPLE_PROFILE[profile] else []
    for config in configs:
        if name in getattr(config, "__dataclass_fields__", {}):
            field = config.__dataclass_fields__[name]
            if field.default is not field.default_factory:  # a plain default (factories are nested configs)
                values.append(field.default)
    return values


def _flow_defaults(entrypoint, monkeypatch):
    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(entrypoint)
    return {p.name: p.default for p in inspect.signature(flow.fn).parameters.values() if p.default is not p.empty}


@pytest.mark.parametrize("entrypoint", list(FLOWS))
def test_every_flow_default_is_its_stage_configs_or_the_sample_profiles(entrypoint, monkeypatch):
    configs, profile = FLOWS[entrypoint]
    checked, wrong = 0, []
    for name, default in _flow_defaults(entrypoint, monkeypatch).items():
        allowed = _allowed(configs, name, profile)
        if not allowed or default is None:
            continue  # the flow's own parameter (work_dir, n_workers, ...), or "the stage / the task decides"
        checked += 1
        if default not in allowed:
            wrong.append(f"{name}={default!r} (the configs say {allowed})")
    assert checked, "the walk matched no parameter at all"
    assert not wrong, f"{entrypoint}: defaults with a second home: {wrong}"


def test_the_sample_profile_names_stage_flow_parameters_it_changes(monkeypatch):
    for stage_name, values in SAMPLE_PROFILE.items():
        defaults = _flow_defaults(STAGE_FLOWS[stage_name], monkeypatch)
        for name, value in values.items():
            assert name in defaults, (stage_name, name)
            assert defaults[name] != value, f"{stage_name}.{name}: the profile restates the stage flow's default"


def test_the_pipeline_passes_the_profile_under_the_runs_own_values():
    from flows.parameters import stage_overrides

    assert stage_overrides("pretrain", None) == SAMPLE_PROFILE["pretrain"]
    assert stage_overrides("pretrain", {"max_train_steps": 7})["max_train_steps"] == 7
    assert stage_overrides("ingest", {"min_chars": 10}) == {"min_chars": 10}


@pytest.mark.parametrize("deployment", yaml.safe_load(PREFECT_YAML.read_text())["deployments"],
                         ids=lambda d: d["name"])
def test_no_deployment_restates_a_flow_default(deployment, monkeypatch):
    defaults = _flow_defaults(deployment["entrypoint"], monkeypatch)
    restated = {k: v for k, v in (deployment.get("parameters") or {}).items() if k in defaults and defaults[k] == v}
    for stage_name, given in (deployment.get("parameters") or {}).items():
        if stage_name in STAGE_FLOWS and isinstance(given, dict):  # the pipeline's per-stage parameters
            stage_defaults = {**_flow_defaults(STAGE_FLOWS[stage_name], monkeypatch), **SAMPLE_PROFILE.get(stage_name, {})}
            restated |= {f"{stage_name}.{k}": v for k, v in given.items() if stage_defaults.get(k) == v}
    assert not restated, f"{deployment['name']} restates the flow's defaults: {restated}"


def test_the_seed_is_one_value_for_every_stage(monkeypatch):
    defaults = _flow_defaults("flows/pipeline.py:bert_pipeline", monkeypatch)
    assert defaults["seed"] == IngestConfig.seed == ExamplesConfig.seed == PretrainConfig.seed == FinetuneConfig.seed
    assert len(defaults) <= 16  # one object per stage (5), the task (4), wiring and the gate
