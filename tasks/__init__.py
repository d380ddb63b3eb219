"""Thin Prefect tasks: each wraps one bert_core call, adds logging and artifacts, and returns paths or small dicts.

Caching is off on purpose (`NO_CACHE`): Prefect's default key hashes the task's own source, not bert_core's, so
idempotence lives in the library's stage records instead.
"""

# Tag of the tasks that train (pretrain, finetune_task): a Prefect tag concurrency limit of this name bounds how many
# train at once (deployments/servers.py `setup` creates it with 1 slot, i.e. one GPU job at a time).
TRAINING_TAG = "bertflow-training"
# A global concurrency limit of this name with 1 slot serialises registrations across workers on different machines
# that share one MLflow server (on one machine the library's file lock already does); without it, a no-op.
REGISTRY_LIMIT = "bertflow-registry"
