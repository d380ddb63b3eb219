"""Flow: fine-tune a pretrained model for a downstream task (default: the bundled SST-2 sample).

Tasks come from the catalogue (`bert_core.downstream.catalogue`): sentence classification (sst2, imdb), sentence pairs (mrpc,
rte), NER on CoNLL files (conll2003) and extractive QA on SQuAD JSON (squad), or a task of your own in a JSON/YAML
file (`task_file`, or `$BERTFLOW_HOME/tasks/<name>.json`); any other task name is a sentence classification whose
columns and labels come from the parameters.
"""

from __future__ import annotations

from prefect import flow

from bert_core.config import SEED, given
from bert_core.downstream.catalogue import get_task
from bert_core.stage import default_work_dir
from flows.parameters import FinetuneParameters
from tasks.finetune import finetune_task


@flow(name="finetune")
def finetune_flow(
    model_name_or_path: str,
    task_name: str = "sst2",
    task_file: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    work_dir: str | None = None,
    finetune: FinetuneParameters | None = None,
    seed: int = SEED,
) -> dict:
    """Fine-tune `model_name_or_path` for `task_name`; returns the run's summary with `kind`, `task_name` and
    `validation_file` added (how the model reads its input is in its `final/` directory, where evaluation and
    registration read it).

    Args:
        model_name_or_path: A directory, `models:/name@alias`, or an installed package that ships a model.
        task_name: Looked up in the task catalogue: sst2, imdb, mrpc, rte (classification), conll2003 (NER), squad
            (extractive QA), a task of `task_file` or `$BERTFLOW_HOME/tasks/<task_name>.json|yaml`; any other name
            is a sentence classification whose columns and labels `finetune` gives.
        task_file: A JSON/YAML file of task catalogue entries (see bert_core.downstream.catalogue).
        train_file: Training file (TSV/CSV/JSON/JSONL/Parquet, CoNLL, SQuAD JSON); empty: the task's own (bundled
            for sst2, mrpc, squad).
        validation_file: Dev file; empty: the task's own.
        work_dir: Outputs go to `<work_dir>/finetune/<task_name>`; empty: `$BERTFLOW_HOME/work`.
        finetune: The fields of `FinetuneConfig` this run changes, e.g. {"learning_rate": 5e-4,
            "num_train_epochs": 3}; the rest are the task's (columns, labels, truncation, max_seq_length), then the
            task kind's config defaults. Fields another kind has no use for (a text column for NER) are dropped.
        seed: Random seed.
    """
    task = get_task(task_name, task_file)
    kind = task.task_kind
    train_file, validation_file = task.files(train_file, validation_file)
    config = kind.build_config(
        task, **given(finetune), model_name_or_path=model_name_or_path, train_file=train_file,
        validation_file=validation_file, output_dir=str(default_work_dir(work_dir) / "finetune" / task_name), seed=seed)
    summary = finetune_task(config)
    return {**summary, "kind": kind.model_kind, "task_name": task_name, "validation_file": validation_file}
