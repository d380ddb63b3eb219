"""bert_core: the bertflow library.

Every pipeline stage (ingest, tokenizer + example generation, pretraining, fine-tuning, evaluation, registration)
lives here as plain Python that runs without Prefect: the orchestration layer in `tasks/` and `flows/` only wraps
these functions. `python -m bert_core <stage> --config run.json` is the library's command line and what
`accelerate launch` runs for multi-process training.
"""

__version__ = "0.1.0"
