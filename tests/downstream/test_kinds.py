"""The task-kind registry (`bert_core.downstream.kinds`): every reference resolves, every kind is served, and no other
module branches on a kind's name."""

import ast
import inspect

import pytest
import transformers

from bert_core.config import ConfigError
from bert_core.downstream import kinds
from bert_core.downstream.catalogue import BUILTIN, Task
from bert_core.downstream.finetune import TrainingConfig
from bert_core.registry import pyfunc_model
from tests.conftest import REPO

KIND_NAMES = set(kinds.TASK_KINDS) | set(kinds.MODEL_KINDS)
# The registry itself, and the pyfunc model, which is logged as code and loads without bertflow: it is told its kind
# by the model_config registration writes (`registration.pyfunc_config`) and picks its behaviour from it.
ALLOWED = {"bert_core/downstream/kinds.py", "bert_core/registry/pyfunc_model.py"}


def _strings(node) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for element in node.elts for s in _strings(element)]
    return []


def kind_comparisons(path) -> list[str]:
    """`x == "token"`, `kind in ("classifier", ...)` and the like: comparisons with a kind's name."""
    source = path.read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                                                 for op in node.ops):
            if any(s in KIND_NAMES for side in (node.left, *node.comparators) for s in _strings(side)):
                found.append(f"{path}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_no_module_but_the_registry_compares_a_kind():
    paths = [p for folder in ("bert_core", "tasks", "flows", "deployments", "bench", "scripts")
             for p in sorted((REPO / folder).rglob("*.py")) if str(p.relative_to(REPO)) not in ALLOWED]
    assert len(paths) > 60
    found = [hit for path in paths for hit in kind_comparisons(path)]
    assert not found, "\n".join(found)


def test_the_check_sees_a_comparison(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('def f(task):\n    return task.kind == "token" or task.model_kind in ("classifier",) or x == "qa"\n')
    assert len(kind_comparisons(probe)) == 2


def test_every_reference_of_every_kind_resolves():
    for kind in kinds.TASK_KINDS.values():
        assert kind.model_kind in kinds.MODEL_KINDS
        assert issubclass(kind.config_class, TrainingConfig) and kind.max_seq_length >= 8
        assert callable(kinds.load(kind.train)) and callable(kinds.load(kind.reader))
        assert set(kind.task_fields) <= {f for f in Task.__dataclass_fields__}
        assert set(kind.task_fields) <= set(kind.config_class.__dataclass_fields__)
        if kind.in_suite:
            assert callable(kinds.load(kind.baseline))
    for kind in kinds.MODEL_KINDS.values():
        assert hasattr(transformers, kind.model_class)
        assert all(hasattr(transformers, cls) for _, cls in kind.model_class_by_type)
        assert callable(kinds.load(kind.signature)) and kind.max_seq_length >= 8
        if kind.scorer:
            assert callable(kinds.load(kind.scorer)) and kind.primary_metric
            assert "pairs" in inspect.signature(kinds.load(kind.signature)).parameters


def test_the_pyfunc_model_serves_every_model_kind():
    assert set(pyfunc_model.KINDS) == set(kinds.MODEL_KINDS)


def test_defaults_come_from_the_config_classes():
    from bert_core.downstream.classification import FinetuneConfig
    from bert_core.downstream.ner import NerConfig
    from bert_core.downstream.qa import QaConfig

    assert [kinds.task_kind(k).max_seq_length for k in ("sentence", "pair", "token", "span-qa")] == [
        FinetuneConfig.max_seq_length, FinetuneConfig.max_seq_length, NerConfig.max_seq_length, QaConfig.max_seq_length]
    assert kinds.model_kind(kinds.DEFAULT_MODEL_KIND) is kinds.task_kind(kinds.DEFAULT_TASK_KIND).model
    assert kinds.MODEL_KINDS[kinds.PRETRAINED].class_for("modernbert") == "AutoModelForMaskedLM"
    assert kinds.MODEL_KINDS[kinds.PRETRAINED].class_for("bert") == "AutoModelForPreTraining"


def test_a_config_is_built_from_a_task_and_the_given_values():
    mrpc = BUILTIN["mrpc"]
    config = mrpc.task_kind.build_config(mrpc, model_name_or_path="m", train_file="t", validation_file="v",
                                         output_dir="o", label_column="Label", max_seq_length=None, doc_stride=64)
    assert (config.text_pair_column, config.label_column, config.metric_for_best_model) == ("#2 String", "Label", "f1")
    assert config.max_seq_length == mrpc.task_kind.max_seq_length  # None is "not given"; doc_stride is QA's alone
    squad = BUILTIN["squad"]
    qa = squad.task_kind.build_config(squad, model_name_or_path="m", train_file="t", validation_file="v",
                                      output_dir="o", text_column="ignored")
    assert (type(qa).__name__, qa.max_seq_length) == ("QaConfig", 384)
    assert kinds.kind_of_config(qa) is squad.task_kind and kinds.kind_of_config(config).model_kind == "classifier"


def test_unknown_kinds_name_the_known_ones():
    with pytest.raises(ConfigError, match="unknown task kind 'regression'; expected one of sentence, pair"):
        kinds.task_kind("regression")
    with pytest.raises(ConfigError, match="unknown model kind 'x'; expected one of classifier"):
        kinds.model_kind("x")
    with pytest.raises(ConfigError, match="TrainingConfig is no task kind's config"):
        kinds.kind_of_config(TrainingConfig(model_name_or_path="m", train_file="t", validation_file="v",
                                            output_dir="o"))


def test_summary_lines_read_as_before():
    line = kinds.model_kind("classifier").summary_line({"eval_accuracy": 0.7333, "eval_f1": 0.745, "label_names": []})
    assert line == "classifier: dev accuracy 73.3%, F1 0.745"
    assert kinds.model_kind("token-classifier").summary_line({"eval_f1": 0.5}).startswith("ner model:  dev entity F1 0.500 (precision nan")
