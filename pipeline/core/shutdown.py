"""Ending a foil command without the interpreter's teardown.

When a command's work is done, CPython still finalises every loaded module and frees every
object before the process ends. With torch, transformers and diffusers loaded that takes 1-2 s
on a 2-core machine (`tests/benchmarks/diffusion.py` measures it), time the user waits after the
last output is written. `exit_quickly` keeps the part of a normal exit that does something for
the user and skips the rest:

- atexit callbacks run, in their usual order: Ray's and Prefect's shutdowns, logging's flush,
  multiprocessing's joins, temporary folders and other `weakref.finalize` cleanups;
- stdout and stderr are flushed;
- then `os._exit(code)`: no module finalisation, no last garbage collection.

It falls back to an ordinary exit when a non-daemon thread is still running (a normal exit
would wait for it) or when `FOIL_FULL_EXIT=1` is set (for tools that report from the teardown).
Only command-line entries call it; code that calls `main()` in-process gets the exit code back.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

FULL_EXIT_ENV = "FOIL_FULL_EXIT"


def _threads_still_running() -> list[str]:
    current = threading.current_thread()
    return [t.name for t in threading.enumerate() if t is not current and not t.daemon and t.is_alive()]


def exit_quickly(code: int | None) -> NoReturn:
    code = 0 if code is None else int(code)
    if os.environ.get(FULL_EXIT_ENV, "") not in ("", "0") or _threads_still_running():
        sys.exit(code)
    atexit._run_exitfuncs()  # what Py_Finalize runs first; it clears the list, so nothing runs twice
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said on it
            pass
    os._exit(code)
