"""The core every stage stands on: schema, shard store, DuckDB catalog, the Stage interface and
its runners. It imports no stage, no model library, no Ray (except inside RayRunner) and no Prefect."""
