"""Entry point of the embedded worker: a Celery worker that ends with the node that started it.

``python -m workers.embedded worker ...`` takes Celery's own arguments. On Linux it asks the kernel for
SIGTERM when its parent dies (PR_SET_PDEATHSIG), so a node killed with SIGKILL leaves no worker behind
to compete with the one its restart starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    parent = int(os.environ.get("MEDAGENT_PARENT_PID", "0") or 0)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if parent and os.getppid() != parent:
        sys.exit(0)  # the node died before this worker got going
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", "-A", "workers.app", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
