"""Thin Prefect tasks: each wraps one bert_core call, adds logging and artifacts, and returns paths or small dicts.

Caching is off on purpose (`NO_CACHE`): Prefect's default key hashes the task's own source, not bert_core's, so
idempotence lives in the library's stage records instead.
"""

import os

# Let bert_core's own log lines reach the Prefect run logs (and the UI), not only the console.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bert_core")
