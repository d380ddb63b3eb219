"""Downstream tasks: a pretrained encoder in, fine-tuned task models and their scores out.

In: an encoder (a `final/` directory, a `models:/` URI or a package that ships one) and tasks from the catalogue.
Out: task models (`final/` with the task's head and labels), evaluation reports and plots, and the suite's report of
the encoder against its random-init twin.

- `catalogue`: one entry per task (files, columns, labels, metric, kind).
- `finetune`: the fine-tuning loop every kind shares, and classification of sentences and sentence pairs.
- `ner`: token classification on CoNLL files; `qa`: extractive QA on SQuAD files.
- `suite`: the encoder against its random-init twin over several tasks and seeds.
- `evaluation`, `reports`: scores of pretrained and task models, and the reports and plots people read.
- `predict`: inference from the command line (fill-mask, NSP, classify, answer, embed).
"""
