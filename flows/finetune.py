"""Flow: fine-tune a pretrained model for sentence or sentence-pair classification (default: the bundled SST-2 sample)."""

from __future__ import annotations

from prefect import flow

from bert_core.corpus import SAMPLE_DIR
from bert_core.finetune import TASK_PRESETS, FinetuneConfig
from flows import default_work_dir
from tasks.finetune import finetune

SAMPLE_TRAIN_FILE = str(SAMPLE_DIR / "sst2" / "train.tsv")
SAMPLE_VALIDATION_FILE = str(SAMPLE_DIR / "sst2" / "dev.tsv")


@flow(name="finetune")
def finetune_flow(
    model_name_or_path: str,
    task_name: str = "sst2",
    train_file: str = SAMPLE_TRAIN_FILE,
    validation_file: str = SAMPLE_VALIDATION_FILE,
    work_dir: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    label_names: list[str] | None = None,
    truncation: str | None = None,
    max_seq_length: int = FinetuneConfig.max_seq_length,
    per_device_train_batch_size: int = FinetuneConfig.per_device_train_batch_size,
    learning_rate: float = FinetuneConfig.learning_rate,
    num_train_epochs: int = FinetuneConfig.num_train_epochs,
    max_train_steps: int | None = None,
    eval_steps: int | None = None,
    early_stopping_patience: int = FinetuneConfig.early_stopping_patience,
    freeze_encoder: bool = FinetuneConfig.freeze_encoder,
    class_weights: str | None = None,
    mixed_precision: str = FinetuneConfig.mixed_precision,
    seed: int = FinetuneConfig.seed,
) -> dict:
    """Fine-tune `model_name_or_path` (a directory, models:/name@alias, or a package that ships a model).

    `task_name` sst2 / imdb / mrpc / rte fills in the columns, labels and truncation of that GLUE-style file; the
    other column and label parameters override them (any other task name needs them).
    """
    preset = dict(TASK_PRESETS.get(task_name, {}))
    overrides = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column,
                 "label_names": tuple(label_names) if label_names else None, "truncation": truncation}
    preset.update({k: v for k, v in overrides.items() if v is not None})
    config = FinetuneConfig(
        model_name_or_path=model_name_or_path,
        train_file=train_file,
        validation_file=validation_file,
        output_dir=str(default_work_dir(work_dir) / "finetune" / task_name),
        max_seq_length=max_seq_length,
        per_device_train_batch_size=per_device_train_batch_size,
        learning_rate=learning_rate,
        num_train_epochs=num_train_epochs,
        max_train_steps=max_train_steps,
        eval_steps=eval_steps,
        early_stopping_patience=early_stopping_patience,
        freeze_encoder=freeze_encoder,
        class_weights=class_weights,
        mixed_precision=mixed_precision,
        seed=seed,
        **preset,
    )
    return finetune(config)
