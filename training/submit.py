"""Ray Job submission: run `foil train` on a running Ray cluster, stream its logs, return its status.

The job's entry point is the same command a user would run on the head node; inside the job,
Ray sets RAY_ADDRESS, so the trainer joins that cluster instead of starting one. `python` is the
interpreter on the cluster (the image built from infra/Dockerfile has foil installed).
"""

from __future__ import annotations

import shlex
import time
from typing import Callable

from pipeline.core.stage import ConfigError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def training_entrypoint(python: str, dataset: str, config: str | None, out: str, workers: int | None, gpu: bool) -> str:
    cmd = [python, "-m", "flows.cli", "train", "--dataset", dataset, "--out", out]
    if config:
        cmd += ["--config", config]
    if workers:
        cmd += ["--workers", str(workers)]
    if gpu:
        cmd.append("--gpu")
    return shlex.join(cmd)


def _submit_when_ready(client, entrypoint: str, wait_s: float = 120.0) -> str:
    """A head that has just started answers before its job agent is up ("No available agent to
    submit job"); wait for the agent rather than fail."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, metadata={"submitted_by": "foil"})
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def submit(address: str, entrypoint: str, wait: bool = True, log: Callable[[str], None] = print, poll_s: float = 1.0, timeout_s: float | None = None) -> tuple[str, str]:
    """Submit `entrypoint` to the cluster's job server at `address` (http://HOST:8265).
    Returns (job id, final status), or the current status when `wait` is False."""
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"--address: cannot reach a Ray job server at {address}: {str(exc).splitlines()[0]}") from None
    job_id = _submit_when_ready(client, entrypoint)
    log(f"[foil submit] job {job_id} submitted to {address}: {entrypoint}")
    if not wait:
        return job_id, str(client.get_job_status(job_id).value)
    shown = 0
    start = time.monotonic()
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:  # stream what is new since the last poll
            log(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in TERMINAL:
            log(f"[foil submit] job {job_id} {status}")
            return job_id, status
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            client.stop_job(job_id)
            log(f"[foil submit] job {job_id} stopped after {timeout_s:g} s")
            return job_id, "STOPPED"
        time.sleep(poll_s)
