"""Prefect flows and the `foil` command line: wiring, retries, schedules, reports."""
