"""`exit_quickly`: atexit callbacks run, buffered output arrives, the exit code is kept, and the
interpreter's teardown (module finalisation) is skipped unless a thread or FOIL_FULL_EXIT asks
for an ordinary exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

# A child that leaves evidence of each part of its exit in files: `atexit` from an atexit
# callback, `teardown` from an object's finaliser that only module teardown triggers, `thread`
# from a non-daemon thread that outlives the main code; stdout is a pipe, so its print stays in
# the buffer until a flush.
CHILD = """
import atexit, sys, threading, time
from pathlib import Path
from pipeline.core.shutdown import exit_quickly

out = Path(sys.argv[1])

class Witness:
    def __del__(self):
        (out / "teardown").write_text("ran")

witness = Witness()  # a module global: freed only when the module is finalised
atexit.register(lambda: (out / "atexit").write_text("ran"))
if len(sys.argv) > 2 and sys.argv[2] == "thread":
    def late():
        time.sleep(0.3)
        (out / "thread").write_text("ran")
    threading.Thread(target=late).start()
print("buffered line, no newline flush", end="")
exit_quickly(3)
"""


def run_child(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    inherited = {k: v for k, v in os.environ.items() if k != "FOIL_FULL_EXIT"}
    full_env = {**inherited, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), *args], capture_output=True, text=True, env=full_env, timeout=60)
    return proc, {p.name for p in tmp_path.iterdir()}


def test_quick_exit_runs_atexit_flushes_output_keeps_the_code_and_skips_teardown(tmp_path):
    proc, evidence = run_child(tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered line, no newline flush"
    assert "atexit" in evidence
    assert "teardown" not in evidence


def test_full_exit_when_asked_for(tmp_path):
    proc, evidence = run_child(tmp_path, env={"FOIL_FULL_EXIT": "1"})
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered line, no newline flush"
    assert {"atexit", "teardown"} <= evidence


def test_a_running_thread_gets_an_ordinary_exit_that_waits_for_it(tmp_path):
    proc, evidence = run_child(tmp_path, "thread")
    assert proc.returncode == 3, proc.stderr
    assert {"atexit", "thread", "teardown"} <= evidence
