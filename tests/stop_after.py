"""``python stop_after.py N PATTERN -m MODULE [ARGS...]``: run ``MODULE`` as ``python -m`` does, and exit at once
with status 137 (``os._exit``: no clean-up, no flush, as after a SIGKILL) right after the process has completed its
N-th file whose name matches the glob PATTERN. Files count when they are renamed into place (``os.replace`` or
``os.rename``), which is how every atomic write ends (``scripts.files.atomic_path``, ignite's atomic ``DiskSaver``).
The tests' deterministic interruption (``conftest.run_module(stop_after=...)``), instead of a kill on a timer."""

from __future__ import annotations

import fnmatch
import os
import runpy
import sys
from collections.abc import Callable

KILLED = 137  # the exit status of a process stopped by SIGKILL, as a shell reports it


def _stopping(rename: Callable, count: list[int], n: int, pattern: str) -> Callable:
    def _rename(src, dst, *args, **kwargs):
        result = rename(src, dst, *args, **kwargs)
        if fnmatch.fnmatch(os.path.basename(os.fspath(dst)), pattern):
            count[0] += 1
            if count[0] >= n:
                os._exit(KILLED)
        return result

    return _rename


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "-m":
        raise SystemExit(__doc__)
    n, pattern, module, args = int(argv[0]), argv[1], argv[3], argv[4:]
    count = [0]
    os.replace = _stopping(os.replace, count, n, pattern)
    os.rename = _stopping(os.rename, count, n, pattern)
    sys.argv = [module, *args]
    sys.path[0] = os.getcwd()  # as ``python -m`` has it, not this file's folder
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
