"""Thin Prefect flows: the order of the stages and nothing else. One flow per stage, plus `pipeline.bert_pipeline`.

`parameters` holds the types of the flows' parameters and the sample profile; `cluster` the Dask cluster the data
stages run on. Prefect's settings for a bertflow run (bert_core's log lines in the run logs, no telemetry, a
first start's wait for the temporary server) are in `prefect.toml` at the repository root, where runs start.
"""
