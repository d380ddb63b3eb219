"""Flow: fine-tune a pretrained model for a downstream task (default: the bundled SST-2 sample).

Tasks come from the catalogue (`bert_core.downstream.catalogue`): sentence classification (sst2, imdb), sentence pairs (mrpc,
rte), NER on CoNLL files (conll2003) and extractive QA on SQuAD JSON (squad), or a task of your own in a JSON/YAML
file (`task_file`, or `$BERTFLOW_HOME/tasks/<name>.json`); any other task name is a sentence classification whose
columns and labels come from the parameters.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow

from bert_core.downstream.catalogue import get_task
from bert_core.downstream.classification import FinetuneConfig
from bert_core.stage import default_work_dir
from flows.parameters import LearningRate, MixedPrecision, NonNegativeInt, PositiveInt, SeqLength
from tasks.finetune import finetune_task


@flow(name="finetune")
def finetune_flow(
    model_name_or_path: str,
    task_name: str = "sst2",
    task_file: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    work_dir: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    label_names: list[str] | None = None,
    truncation: str | None = None,
    max_seq_length: SeqLength | None = None,
    per_device_train_batch_size: PositiveInt = FinetuneConfig.per_device_train_batch_size,
    gradient_accumulation_steps: PositiveInt = FinetuneConfig.gradient_accumulation_steps,
    learning_rate: LearningRate = FinetuneConfig.learning_rate,
    num_train_epochs: PositiveInt = FinetuneConfig.num_train_epochs,
    max_train_steps: PositiveInt | None = None,
    eval_steps: PositiveInt | None = None,
    early_stopping_patience: NonNegativeInt = FinetuneConfig.early_stopping_patience,
    freeze_encoder: bool = FinetuneConfig.freeze_encoder,
    class_weights: Literal["balanced"] | None = None,
    mixed_precision: MixedPrecision = FinetuneConfig.mixed_precision,
    num_threads: PositiveInt | None = FinetuneConfig.num_threads,
    group_by_length: bool = FinetuneConfig.group_by_length,
    seed: int = FinetuneConfig.seed,
) -> dict:
    """Fine-tune `model_name_or_path` (a directory, models:/name@alias, or a package that ships a model).

    `task_name` is looked up in the task catalogue (`task_file`: a JSON/YAML file of your own task entries; else the
    built-ins, else `$BERTFLOW_HOME/tasks/<task_name>.json|yaml`): sst2 / imdb / mrpc / rte fill in the columns,
    labels and truncation of that GLUE-style file (the column and label parameters override them; any other
    classification task needs them); conll2003 trains NER on CoNLL files (label_names: its tags), squad extractive
    QA on SQuAD JSON. Without train/validation files the task's own are used (bundled for sst2, mrpc, squad).
    `max_seq_length` defaults to the task's, else its kind's (`bert_core.downstream.kinds`). `mixed_precision` "auto": bf16 where the
    device has bf16 units that measure faster, else fp32; `num_threads`: torch threads (empty: a share of the
    cores, see pretrain); `group_by_length`: batches of similar-length examples (less padding; off: plain shuffled
    batches).
    Returns the run's summary with `kind`, `task_name` and `validation_file` added; how the model reads its input
    is in its `final/` directory (`bert_core.training.model.model_description`), where evaluation and registration read it.
    """
    task = get_task(task_name, task_file)
    kind = task.task_kind
    train_file, validation_file = task.files(train_file, validation_file)
    config = kind.build_config(
        task, model_name_or_path=model_name_or_path, train_file=train_file, validation_file=validation_file,
        output_dir=str(default_work_dir(work_dir) / "finetune" / task_name), text_column=text_column,
        text_pair_column=text_pair_column, label_column=label_column,
        label_names=tuple(label_names) if label_names else None, truncation=truncation, max_seq_length=max_seq_length,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=learning_rate,
        num_train_epochs=num_train_epochs, max_train_steps=max_train_steps, eval_steps=eval_steps,
        early_stopping_patience=early_stopping_patience, freeze_encoder=freeze_encoder, class_weights=class_weights,
        mixed_precision=mixed_precision, num_threads=num_threads, group_by_length=group_by_length, seed=seed)
    summary = finetune_task(config)
    return {**summary, "kind": kind.model_kind, "task_name": task_name, "validation_file": validation_file}
