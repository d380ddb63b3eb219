"""One home per parameter default: the stage config dataclass that uses it, or the sample profile.

Every flow parameter that names a field of a stage config the flow builds must default to that field's default,
to the sample profile's value (flows.SAMPLE_PROFILE), or to None (the stage or the task decides); and no
deployment restates a flow default (deployments/prefect.yaml holds only what differs per environment).
"""

import inspect

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from bert_core.cleaning import CleaningConfig
from bert_core.corpus import ReadConfig
from bert_core.dedup import DedupConfig
from bert_core.examples import ExamplesConfig
from bert_core.finetune import FinetuneConfig
from bert_core.ingest import IngestConfig
from bert_core.masking import MaskingConfig
from bert_core.pretrain import PretrainConfig
from bert_core.tokenizer import TokenizerConfig
from deployments import PREFECT_YAML
from flows import SAMPLE_PROFILE
from tests.conftest import REPO

INGEST = (IngestConfig, ReadConfig, CleaningConfig, DedupConfig)
EXAMPLES = (ExamplesConfig, TokenizerConfig, MaskingConfig)
# flow -> (the configs its plain parameter names belong to, the configs of its `finetune_` parameters)
FLOWS = {
    "flows/pipeline.py:bert_pipeline": ((*INGEST, *EXAMPLES, PretrainConfig), (FinetuneConfig,)),
    "flows/continued_pretraining.py:continued_pretraining": ((*INGEST, *EXAMPLES, PretrainConfig), ()),
    "flows/ingest.py:ingest_flow": (INGEST, ()),
    "flows/examples.py:examples_flow": (EXAMPLES, ()),
    "flows/pretrain.py:pretrain_flow": ((PretrainConfig,), ()),
    "flows/finetune.py:finetune_flow": ((FinetuneConfig,), ()),
    "flows/task_model.py:task_model": ((FinetuneConfig,), ()),
}


def _allowed(configs, name):
    values = []
    for config in configs:
        if name in getattr(config, "__dataclass_fields__", {}):
            field = config.__dataclass_fields__[name]
            if field.default is not field.default_factory:  # a plain default (factories are nested configs)
                values.append(field.default)
            if name in SAMPLE_PROFILE.get(config, {}):
                values.append(SAMPLE_PROFILE[config][name])
    return values


def _flow_defaults(entrypoint, monkeypatch):
    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(entrypoint)
    return {p.name: p.default for p in inspect.signature(flow.fn).parameters.values() if p.default is not p.empty}


@pytest.mark.parametrize("entrypoint", list(FLOWS))
def test_every_flow_default_is_its_stage_configs_or_the_sample_profiles(entrypoint, monkeypatch):
    plain, prefixed = FLOWS[entrypoint]
    checked, wrong = 0, []
    for name, default in _flow_defaults(entrypoint, monkeypatch).items():
        configs, field = (prefixed, name[len("finetune_"):]) if name.startswith("finetune_") else (plain, name)
        allowed = _allowed(configs, field)
        if not allowed or default is None:
            continue  # the flow's own parameter (work_dir, n_workers, ...), or "the stage / the task decides"
        checked += 1
        if default not in allowed:
            wrong.append(f"{name}={default!r} (the configs say {allowed})")
    assert checked, "the walk matched no parameter at all"
    assert not wrong, f"{entrypoint}: defaults with a second home: {wrong}"


def test_the_sample_profile_names_real_fields_that_differ():
    for config, values in SAMPLE_PROFILE.items():
        for name, value in values.items():
            assert name in config.__dataclass_fields__, (config.__name__, name)
            assert getattr(config, name) != value, f"{config.__name__}.{name}: the profile restates the default"


@pytest.mark.parametrize("deployment", yaml.safe_load(PREFECT_YAML.read_text())["deployments"],
                         ids=lambda d: d["name"])
def test_no_deployment_restates_a_flow_default(deployment, monkeypatch):
    defaults = _flow_defaults(deployment["entrypoint"], monkeypatch)
    restated = {k: v for k, v in (deployment.get("parameters") or {}).items() if k in defaults and defaults[k] == v}
    assert not restated, f"{deployment['name']} restates the flow's defaults: {restated}"


def test_the_pipeline_reads_its_defaults_from_the_configs(monkeypatch):
    """Read from the dataclasses and the profile, not copied: the seed is one value for every stage."""
    defaults = _flow_defaults("flows/pipeline.py:bert_pipeline", monkeypatch)
    assert defaults["max_seq_length"] == ExamplesConfig.max_seq_length
    assert defaults["vocab_size"] == SAMPLE_PROFILE[TokenizerConfig]["vocab_size"]
    assert defaults["seed"] == IngestConfig.seed == ExamplesConfig.seed == PretrainConfig.seed == FinetuneConfig.seed
