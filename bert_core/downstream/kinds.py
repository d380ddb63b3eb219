"""The task-kind registry: everything that differs by kind, in one place.

A **task kind** says how a downstream task's files are read and what is trained on them: `sentence` and `pair`
(sequence classification), `token` (NER on CoNLL files), `span-qa` (extractive QA on SQuAD JSON). A **model kind**
says what a trained or registered model is and how it answers `predict`: `classifier`, `token-classifier`,
`question-answering`, and `pretrained` for encoders. Each task kind trains one model kind.

Each entry names its config class, training function, file reader, scorer (the dev metrics and the report's plot),
primary metric, transformers model class, pyfunc signature and example input, and where its defaults live
(`max_seq_length` is its config class's default: written once, in the dataclass). No other module compares a
kind's name (`tests/test_library_boundaries.py` holds the code to it): they look a kind up here and use what it
names. `registry/pyfunc_model.py` is the exception by design: it is logged as code and loads without bertflow, so it
reads the kind and its settings from the model config that registration writes from these entries.

Code is named as "module:attribute" and imported on first use, as transformers' auto classes name theirs: this
module imports nothing heavy, and the modules it names can look themselves up here.

Adding a kind (say `regression`): write its config class, training function, reader and scorer in a module of
`bert_core.downstream`, a signature function in `bert_core.registry.signatures`, its `predict` behaviour in
`bert_core.registry.pyfunc_model`, and one entry below for each of the task kind and the model kind.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from typing import Any

from bert_core.config import ConfigError

# The CoNLL-2003 tag set (IOB2): the token kind's default labels.
CONLL2003_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def load(reference: str) -> Any:
    """The object a "module:attribute" reference names."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


class _Configured:
    """A kind whose defaults are its config class's (`config`: "module:Class")."""

    config: str

    @property
    def config_class(self) -> type:
        return load(self.config)

    @property
    def max_seq_length(self) -> int:
        """The window of this kind by default: its config class's `max_seq_length`, written once there."""
        return self.config_class.max_seq_length


@dataclass(frozen=True, kw_only=True)
class ModelKind(_Configured):
    """What a model is and how it is served: the registry, evaluation, model cards and the pyfunc model read it."""

    name: str  # written into the model's bertflow_model.json and the registered pyfunc's model_config
    description: str  # the model card's "A <description> trained by bertflow."
    pipeline_tag: str  # the Hugging Face Hub's pipeline tag (and the card's task type)
    model_class: str  # the transformers Auto class that loads it, e.g. "AutoModelForSequenceClassification"
    # model_type (config.json) -> another Auto class, where an architecture has no class of the kind's own
    model_class_by_type: tuple[tuple[str, str], ...] = ()
    config: str  # "module:Class": the config whose defaults (max_seq_length, doc_stride) the model kind takes
    scorer: str | None = None  # "module:function(model_dir, data_file, **reading) -> TaskScore"; None: not scored so
    primary_metric: str | None = None  # the dev metric (without "eval_") that ranks models of this kind
    signature: str  # "module:function(pairs) -> ModelSignature": what its pyfunc takes and gives
    example: Any  # an example input of its pyfunc: a list of texts, or columns of a DataFrame
    pair_example: Any = None  # the same for a model that reads sentence pairs (None: it does not)
    use_note: str = ""  # what the model card adds after the example call
    suite_results: bool = False  # its card's results are the downstream suite's (an encoder), not its own dev scores
    summary: str = ""  # the pipeline summary's line for a model of this kind: a format string over its metrics

    def class_for(self, model_type: str | None) -> str:
        """The transformers Auto class that loads a model of this kind with this `model_type`."""
        return dict(self.model_class_by_type).get(model_type or "", self.model_class)

    def score(self, model_dir, data_file, **reading):
        if self.scorer is None:
            raise ConfigError(f"a {self.name} model has no task to be scored on; expected one of "
                              f"{', '.join(k for k, v in MODEL_KINDS.items() if v.scorer)}")
        return load(self.scorer)(model_dir, data_file, **reading)

    def example_input(self, pairs: bool = False) -> Any:
        return self.pair_example if pairs and self.pair_example is not None else self.example

    def summary_line(self, metrics: dict[str, Any]) -> str:
        values = {k.removeprefix("eval_"): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

        class Missing(dict):
            def __missing__(self, key):
                return float("nan")

        return self.summary.format_map(Missing(values))


@dataclass(frozen=True, kw_only=True)
class TaskKind(_Configured):
    """How a task of this kind is read and trained: the catalogue, the fine-tuning flow and the suite read it."""

    name: str  # a catalogue entry's `kind`
    model_kind: str  # the ModelKind it trains
    config: str  # "module:Class" of its fine-tuning config (a TrainingConfig)
    train: str  # "module:function(config) -> summary"
    reader: str  # "module:function": reads one of its task files
    # Catalogue fields (`Task`) that carry over into its config when set (columns, labels, truncation, ...)
    task_fields: tuple[str, ...]
    needs_text_pair: bool = False  # a task of this kind must name a second text column
    label_names: tuple[str, ...] | None = None  # default labels of its tasks (None: the catalogue's default)
    # dev-file columns kept out of the pretraining corpus: None: the task's text columns; () none at all
    decontamination_columns: tuple[str, ...] | None = None
    in_suite: bool = False  # the suite fine-tunes it from an encoder and from its random-init twin
    baseline: str | None = None  # "module:function(task, files) -> facts": example counts and the majority floor

    @property
    def model(self) -> ModelKind:
        return MODEL_KINDS[self.model_kind]

    def run(self, config) -> dict[str, Any]:
        """Fine-tune: the kind's training function on its config."""
        return load(self.train)(config)

    def read(self, path, **options):
        return load(self.reader)(path, **options)

    def build_config(self, task, **values) -> Any:
        """The kind's config for `task`: `values` (files, output_dir, training settings; None: not given) over the
        task's own fields over the config's defaults. A value the config has no field for is dropped: settings of
        another kind (a text column for NER) do not apply."""
        known = {f.name for f in fields(self.config_class)}
        given = {k: v for k, v in values.items() if v is not None and k in known}
        if task.max_seq_length and "max_seq_length" not in given:
            given["max_seq_length"] = task.max_seq_length
        given.setdefault("task_name", task.name)
        return self.config_class(**{**task.config_fields(), **given})


# Summary line formats: a metric name in braces is its "eval_" value.
MODEL_KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (
    ModelKind(name="classifier", description="text classifier", pipeline_tag="text-classification",
              model_class="AutoModelForSequenceClassification",
              config="bert_core.downstream.classification:FinetuneConfig",
              scorer="bert_core.downstream.evaluation:score_classifier", primary_metric="accuracy",
              signature="bert_core.registry.signatures:classifier_signature",
              example=["a gorgeous, witty film"],
              pair_example={"text": ["The company said profits rose."],
                            "text_pair": ["Profits went up, the company said."]},
              summary="classifier: dev accuracy {accuracy:.1%}, F1 {f1:.3f}"),
    ModelKind(name="token-classifier", description="token classifier (NER)", pipeline_tag="token-classification",
              model_class="AutoModelForTokenClassification", config="bert_core.downstream.ner:NerConfig",
              scorer="bert_core.downstream.evaluation:score_ner", primary_metric="f1",
              signature="bert_core.registry.signatures:token_classifier_signature",
              example=["Alice Smith flew from Paris to Berlin ."],
              summary="ner model:  dev entity F1 {f1:.3f} (precision {precision:.3f}, recall {recall:.3f})"),
    ModelKind(name="question-answering", description="extractive question answering model",
              pipeline_tag="question-answering", model_class="AutoModelForQuestionAnswering",
              config="bert_core.downstream.qa:QaConfig", scorer="bert_core.downstream.evaluation:score_qa",
              primary_metric="f1", signature="bert_core.registry.signatures:question_answering_signature",
              example={"question": ["Who ruled Normandy?"],
                       "context": ["Normandy was ruled by Rollo, a Viking leader."]},
              summary="qa model:   dev exact match {exact_match:.1f}, F1 {f1:.1f}"),
    ModelKind(name="pretrained", description="pretrained encoder", pipeline_tag="fill-mask",
              model_class="AutoModelForPreTraining",
              # ModernBERT pretrains MLM only: it has no pretraining-heads class
              model_class_by_type=(("modernbert", "AutoModelForMaskedLM"),),
              config="bert_core.examples.generation:ExamplesConfig",  # the window it was pretrained with
              signature="bert_core.registry.signatures:pretrained_signature",
              example={"text": ["the [MASK] of the film"]},
              use_note="  # params={'task': 'nsp' (with a text_pair column) | 'embed'}", suite_results=True),
)}

_CLASSIFICATION_FIELDS = ("text_column", "text_pair_column", "label_column", "label_names", "truncation",
                          "metric_for_best_model")
TASK_KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (
    TaskKind(name="sentence", model_kind="classifier", config="bert_core.downstream.classification:FinetuneConfig",
             train="bert_core.downstream.classification:finetune",
             reader="bert_core.downstream.classification:read_task_file", task_fields=_CLASSIFICATION_FIELDS,
             in_suite=True, baseline="bert_core.downstream.suite:classification_facts"),
    TaskKind(name="pair", model_kind="classifier", config="bert_core.downstream.classification:FinetuneConfig",
             train="bert_core.downstream.classification:finetune",
             reader="bert_core.downstream.classification:read_task_file", task_fields=_CLASSIFICATION_FIELDS,
             needs_text_pair=True, in_suite=True, baseline="bert_core.downstream.suite:classification_facts"),
    # CoNLL files are one word per line: nothing to match the corpus's sentences against
    TaskKind(name="token", model_kind="token-classifier", config="bert_core.downstream.ner:NerConfig",
             train="bert_core.downstream.ner:finetune_ner", reader="bert_core.downstream.ner:read_conll",
             task_fields=("label_names", "metric_for_best_model"), label_names=CONLL2003_TAGS,
             decontamination_columns=(), in_suite=True, baseline="bert_core.downstream.suite:token_facts"),
    TaskKind(name="span-qa", model_kind="question-answering", config="bert_core.downstream.qa:QaConfig",
             train="bert_core.downstream.qa:finetune_qa", reader="bert_core.ingest.textfiles:read_squad",
             task_fields=("metric_for_best_model",), decontamination_columns=("context",)),
)}
# A task the catalogue does not know is a sentence classification; a model that does not describe itself, a classifier.
DEFAULT_TASK_KIND = "sentence"
DEFAULT_MODEL_KIND = TASK_KINDS[DEFAULT_TASK_KIND].model_kind
PRETRAINED = "pretrained"  # the model kind of an encoder: what pretraining writes into its final/ (training.pretrain)


def task_kind(name: str) -> TaskKind:
    if name not in TASK_KINDS:
        raise ConfigError(f"unknown task kind {name!r}; expected one of {', '.join(TASK_KINDS)}")
    return TASK_KINDS[name]


def model_kind(name: str) -> ModelKind:
    if name not in MODEL_KINDS:
        raise ConfigError(f"unknown model kind {name!r}; expected one of {', '.join(MODEL_KINDS)}")
    return MODEL_KINDS[name]


def kind_of_config(config) -> TaskKind:
    """The task kind whose config class `config` is (sentence and pair share one: the first is returned)."""
    for kind in TASK_KINDS.values():
        if type(config).__name__ == kind.config.partition(":")[2] and isinstance(config, kind.config_class):
            return kind
    raise ConfigError(f"{type(config).__name__} is no task kind's config; expected one of "
                      f"{', '.join(sorted({k.config.partition(':')[2] for k in TASK_KINDS.values()}))}")
