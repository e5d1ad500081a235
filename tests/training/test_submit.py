"""`foil submit` errors. A submission that trains runs against a real three-node cluster in
tests/pipeline/core/test_multinode.py (a Ray Job on its head, one Ray Train worker per node)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import free_port


def test_submit_to_nothing_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "submit", "--address", f"http://127.0.0.1:{free_port()}", "--dataset", "d", "--out", "o"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "cannot reach a Ray job server" in proc.stderr and "Traceback" not in proc.stderr
