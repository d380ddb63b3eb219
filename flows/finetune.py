"""Flow: fine-tune a pretrained model for single-sentence classification (default: the bundled SST-2 sample)."""

from __future__ import annotations

from prefect import flow

from bert_core.corpus import SAMPLE_DIR
from bert_core.finetune import FinetuneConfig
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
    text_column: str = FinetuneConfig.text_column,
    label_column: str = FinetuneConfig.label_column,
    label_names: list[str] | None = None,
    max_seq_length: int = FinetuneConfig.max_seq_length,
    per_device_train_batch_size: int = FinetuneConfig.per_device_train_batch_size,
    learning_rate: float = FinetuneConfig.learning_rate,
    num_train_epochs: int = FinetuneConfig.num_train_epochs,
    max_train_steps: int | None = None,
    mixed_precision: str = FinetuneConfig.mixed_precision,
    seed: int = FinetuneConfig.seed,
) -> dict:
    config = FinetuneConfig(
        model_name_or_path=model_name_or_path,
        train_file=train_file,
        validation_file=validation_file,
        output_dir=str(default_work_dir(work_dir) / "finetune" / task_name),
        text_column=text_column,
        label_column=label_column,
        label_names=tuple(label_names) if label_names else FinetuneConfig.label_names,
        max_seq_length=max_seq_length,
        per_device_train_batch_size=per_device_train_batch_size,
        learning_rate=learning_rate,
        num_train_epochs=num_train_epochs,
        max_train_steps=max_train_steps,
        mixed_precision=mixed_precision,
        seed=seed,
    )
    return finetune(config)
