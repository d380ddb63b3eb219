"""The downstream-task catalogue: one entry per task, the only place a task's kind, columns, labels, metric,
bundled sample files, decontamination columns and default sequence length are written.

Flows, fine-tuning, evaluation, registration and decontamination look tasks up here (`get_task`). A task of a
known kind needs no code: a small JSON or YAML file with the fields of `Task`, given as `task_file` or placed at
`$BERTFLOW_HOME/tasks/<name>.json|yaml|yml` (a place every worker of a deployment can read), e.g.

    {"name": "my-reviews", "kind": "sentence", "text_column": "review", "label_column": "stars",
     "label_names": ["bad", "good"], "train_file": "/data/reviews/train.tsv", "validation_file": "/data/reviews/dev.tsv"}

Kinds (`bert_core.downstream.kinds`): `sentence` and `pair` (sequence classification on TSV/CSV/JSONL/Parquet),
`token` (NER on CoNLL files), `span-qa` (extractive QA on SQuAD JSON). A task's kind fixes the model kind it trains
(`model_kind`), its reader, its primary metric (higher is better) and its default sequence length.
A name that is in neither place is a sentence classification whose columns come from the caller's parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from bert_core.config import ConfigError, SeqLength, check_fields
from bert_core.downstream.kinds import DEFAULT_TASK_KIND, TASK_KINDS, TaskKind
from bert_core.ingest.sources import SAMPLE_DIR
from bert_core.stage import bertflow_home


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    kind: Literal[tuple(TASK_KINDS)]  # a task kind of `bert_core.downstream.kinds`: "sentence", "pair", "token" or "span-qa"
    text_column: str = "sentence"  # sentence / pair kinds
    text_pair_column: str | None = None  # pair kind: the second text
    label_column: str = "label"
    label_names: tuple[str, ...] = ("negative", "positive")  # token kind: the tag set (default CoNLL-2003's)
    truncation: Literal["head", "head_tail"] = "head"  # "head_tail" keeps the start and the end of long texts (IMDb)
    metric_for_best_model: str | None = None  # the dev metric that picks the saved checkpoint; default: primary
    train_file: str | None = None  # bundled sample: relative to bert_core/sample_data; or an absolute path
    validation_file: str | None = None
    decontamination_columns: tuple[str, ...] | None = None  # dev-file columns kept out of the corpus; None: the kind's
    max_seq_length: SeqLength | None = None  # default: the kind's (its config class's `max_seq_length`)
    # (train, validation) names inside a data directory laid out like GLUE's and ../shared/data/tasks
    # (`sst2/train.tsv`, `conll2003/valid.txt`); default: the sample's names.
    data_files: tuple[str, ...] | None = None
    # The dataset on the Hugging Face Hub, "NAME[:CONFIG]" as in an `hf:` corpus source: the model card's metadata.
    hub_dataset: str | None = None

    def __post_init__(self):
        check_fields(self)
        if self.task_kind.needs_text_pair and not self.text_pair_column:
            raise ConfigError(f"task {self.name!r} is of kind {self.kind!r}; expected a text_pair_column")
        if self.task_kind.label_names and self.label_names == Task.label_names:
            object.__setattr__(self, "label_names", self.task_kind.label_names)
        if (self.train_file is None) != (self.validation_file is None):
            raise ConfigError(f"task {self.name!r}: give both train_file and validation_file, or neither")

    @property
    def task_kind(self) -> TaskKind:
        """Everything that differs by kind: config class, training function, reader, metrics, defaults."""
        return TASK_KINDS[self.kind]

    @property
    def model_kind(self) -> str:
        return self.task_kind.model_kind

    @property
    def primary_metric(self) -> str:
        """The registered metric name the promotion gate compares (`eval_accuracy`, `eval_f1`)."""
        return f"eval_{self.task_kind.model.primary_metric}"

    def files(self, train_file: str | None = None, validation_file: str | None = None, *,
              data_dir: str | Path | None = None) -> tuple[str, str]:
        """(train, validation) files: the given ones; else, with `data_dir`, the task's full files in it (missing
        ones are an error naming them); else the task's own (bundled samples resolved)."""
        if data_dir is not None and (train_file is None or validation_file is None):
            names = self.data_files or (self.train_file, self.validation_file)
            if names[0] is None:
                raise ConfigError(f"task {self.name!r} names no files to look for in {data_dir}: give train_file "
                                  f"and validation_file (or data_files in its catalogue entry)")
            found = [str(Path(data_dir) / name) for name in names]
            missing = [f for f in found if not Path(f).is_file()]
            if missing:
                raise ConfigError(f"task {self.name!r}: no {', '.join(missing)}; expected {names[0]} and {names[1]} "
                                  f"under the data directory {data_dir}")
            return train_file or found[0], validation_file or found[1]
        if (train_file is None or validation_file is None) and self.train_file is None:
            raise ConfigError(f"task {self.name!r} ships no sample: give train_file and validation_file")
        own = [str(Path(f) if Path(f).is_absolute() else SAMPLE_DIR / f) for f in (self.train_file, self.validation_file)
               if f is not None]
        return train_file or own[0], validation_file or own[1]

    def config_fields(self) -> dict[str, Any]:
        """The fields of its kind's config this entry sets (columns, labels, truncation, the best-model metric)."""
        return {name: getattr(self, name) for name in self.task_kind.task_fields if getattr(self, name) is not None}

    def decontamination_specs(self, validation_file: str, text_column: str | None = None) -> list[str]:
        """`path::columns` specs of the dev-file texts to keep out of the pretraining corpus."""
        if self.decontamination_columns is not None:
            columns = list(self.decontamination_columns)
        elif self.task_kind.decontamination_columns is not None:
            columns = list(self.task_kind.decontamination_columns)
        else:
            columns = [text_column or self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])
        return [f"{validation_file}::{','.join(columns)}"] if columns else []


BUILTIN: dict[str, Task] = {task.name: task for task in (
    Task(name="sst2", kind="sentence", train_file="sst2/train.tsv", validation_file="sst2/dev.tsv",
         hub_dataset="stanfordnlp/sst2"),
    Task(name="imdb", kind="sentence", text_column="text", truncation="head_tail",
         data_files=("imdb/train.jsonl.gz", "imdb/test.jsonl.gz"), hub_dataset="stanfordnlp/imdb"),
    Task(name="mrpc", kind="pair", text_column="#1 String", text_pair_column="#2 String", label_column="Quality",
         label_names=("not_paraphrase", "paraphrase"), metric_for_best_model="f1",
         train_file="mrpc/train.tsv", validation_file="mrpc/dev.tsv", hub_dataset="nyu-mll/glue:mrpc"),
    Task(name="rte", kind="pair", text_column="sentence1", text_pair_column="sentence2",
         label_names=("entailment", "not_entailment"), data_files=("rte/train.tsv", "rte/dev.tsv"),
         hub_dataset="nyu-mll/glue:rte"),
    # Reuters text: not redistributable, so no bundled sample.
    Task(name="conll2003", kind="token", data_files=("conll2003/train.txt", "conll2003/valid.txt"),
         hub_dataset="eriktks/conll2003"),
    Task(name="ner", kind="token"),
    Task(name="squad", kind="span-qa",
         train_file="squad/train.json.gz", validation_file="squad/dev.json.gz", hub_dataset="rajpurkar/squad"),
)}


def load_task_file(path: str | Path) -> list[Task]:
    """The tasks of a JSON or YAML file: one task object, or a list of them."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"task file {path} does not exist; expected a JSON or YAML file of task entries") from None
    if path.suffix.lower() in {".yaml", ".yml"}:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"task file {path}: not valid YAML ({error})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"task file {path}: not valid JSON ({error})") from None
    entries = data if isinstance(data, list) else [data]
    tasks = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError(f"task file {path}: an entry is {type(entry).__name__}; expected an object of Task fields")
        unknown = sorted(set(entry) - {f.name for f in fields(Task)})
        if unknown:
            raise ConfigError(f"task file {path}: unknown Task field(s) {unknown}; expected some of "
                              f"{sorted(f.name for f in fields(Task))}")
        try:
            tasks.append(Task(**entry))
        except TypeError as error:  # a required field missing
            raise ConfigError(f"task file {path}: {error}; expected at least name and kind") from None
        except ConfigError as error:
            raise ConfigError(f"task file {path}: {error}") from None
    return tasks


def get_task(name: str, task_file: str | None = None) -> Task:
    """The catalogue entry of `name`: from `task_file` if given, else the built-ins, else
    `$BERTFLOW_HOME/tasks/<name>.json|yaml|yml`; else a sentence classification with the default columns."""
    if task_file:
        tasks = {task.name: task for task in load_task_file(task_file)}
        if name not in tasks:
            raise ConfigError(f"task file {task_file} defines {sorted(tasks)}, not {name!r}")
        return tasks[name]
    if name in BUILTIN:
        return BUILTIN[name]
    for suffix in (".json", ".yaml", ".yml"):
        path = bertflow_home() / "tasks" / f"{name}{suffix}"
        if path.is_file():
            return get_task(name, str(path))
    return Task(name=name, kind=DEFAULT_TASK_KIND)
