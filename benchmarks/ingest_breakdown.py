"""Where one received instance's time goes: the node's Storage SCP step by step, fed by one storescu.

Run from the repository root: ``.venv/bin/python benchmarks/ingest_breakdown.py [--copies 2]``.

The SCP runs alone in this process (spool and SQLite index, no tracker, no worker), with each step of a
C-STORE wrapped in a timer that adds up wall time and the CPU time of the thread that ran it. The chest CT
of ../shared/data is sent ``--copies`` times with new UIDs (``benchmarks/ingest.py``'s files) by one
storescu association. The table prints, per step, how often it ran and its mean wall and CPU milliseconds;
steps nest (``_answer`` holds ``handle_store``, which holds ``_store``...), and the checks and the hash run
in worker threads beside the staged write. Below it: instances per second, and the process's user and system CPU
per instance, which is what limits several associations at once (one core: the GIL).

The timers cost a little themselves: the instances per second here are below ``ingest.py``'s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ingest  # noqa: E402

import dicom_node.scp as scp_module  # noqa: E402
import dicom_node.transport as transport  # noqa: E402
from config.settings import parse_settings  # noqa: E402
from dicom_node.allocator import keep_freed_memory  # noqa: E402
from dicom_node.index import Index  # noqa: E402
from dicom_node.spool import Spool  # noqa: E402
from tests.helpers.peers import free_port  # noqa: E402

#: step name -> [calls, wall seconds, CPU seconds of the calling thread]
TOTALS: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])

STEPS: list[tuple[Any, str, str]] = [
    (transport._DUL, "_read_pdu_data", "read one PDU (all of it below)"),
    (transport._StoreReceiver, "_answer", "  C-STORE handler + response"),
    (scp_module.StorageSCP, "_store", "    _store"),
    (scp_module.Index, "instance", "      index read"),
    (scp_module, "write_synced", "      staged write (O_DSYNC)"),
    (scp_module, "inspect_received", "      inspect (worker)"),
    (scp_module.StorageSCP, "_spool_and_index", "      spool and index"),
    (scp_module.Spool, "commit", "        rename into place"),
    (scp_module.Index, "record_instance", "        index row (commit)"),
    (scp_module, "sync_directory", "        folder fsync (worker)"),
    (scp_module, "content_hash", "  content hash (worker)"),
]


def timed(owner: Any, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper that adds its wall and thread CPU time to ``TOTALS[label]``."""
    function: Callable[..., Any] = getattr(owner, name)

    def wrapper(*arguments: Any, **keywords: Any) -> Any:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return function(*arguments, **keywords)
        finally:
            total = TOTALS[label]
            total[0] += 1
            total[1] += time.perf_counter() - wall
            total[2] += time.thread_time() - cpu

    setattr(owner, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="copies of the 55-slice CT (default 2)")
    arguments = parser.parse_args(argv)
    for owner, name, label in STEPS:
        timed(owner, name, label)
    keep_freed_memory()  # as ``medagent serve`` does
    with tempfile.TemporaryDirectory(prefix="medagent-breakdown-") as temporary:
        root = Path(temporary)
        (root / "files").mkdir()
        files = ingest.make_files(root / "files", arguments.copies)
        settings = parse_settings(
            {
                "node": {
                    "ae_title": "MEDAGENT",
                    "port": free_port(),
                    "bind": "127.0.0.1",
                    "storage": str(root),
                },
                "sources": [{"ae_title": "STORESCU"}],
                "models": {"device": "cpu"},
            },
            environ={},
        ).with_absolute_storage()
        server = scp_module.StorageSCP(settings, Index(root / "index.sqlite3"), Spool(root))
        server.start()
        try:
            before = os.times()
            seconds = ingest.send(files, "MEDAGENT", server.port)
            after = os.times()
        finally:
            server.stop()
    count = len(files)
    print(
        f"\n{count} CT instances, one storescu association, {count / seconds:.1f} instances/s with the timers\n"
    )
    print(f"{'step':34} {'calls':>6} {'wall ms':>8} {'CPU ms':>7}")
    for _, _, label in STEPS:
        calls, wall, cpu = TOTALS[label]
        if calls:
            print(f"{label:34} {int(calls):6d} {wall / calls * 1000:8.3f} {cpu / calls * 1000:7.3f}")
    user, system = after.user - before.user, after.system - before.system
    print(
        f"\nprocess CPU per instance: {user / count * 1000:.2f} ms user, {system / count * 1000:.2f} ms system"
        f" ({(user + system) / seconds:.0%} of one core over the transfer)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
