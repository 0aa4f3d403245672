"""Ingest throughput: the node against DCMTK storescp and Orthanc, all fed by the same storescu on loopback.

Run from the repository root: ``.venv/bin/python benchmarks/ingest.py [--copies 4] [--rounds 2]``.

The 55-slice chest CT of ../shared/data is copied ``--copies`` times with new Study, Series and SOP
Instance UIDs (so that every instance is new to every receiver) and sent by one ``storescu`` association
(TCP_NODELAY=1, maximum PDU 128 KiB, the largest DCMTK allows). The receivers:

- the node: ``medagent serve`` with no route (ingest only): checks, spool file written with O_DSYNC
  (synced as by fdatasync), index row in SQLite (synchronous=FULL) before each Success; with
  ``--node-processes N`` also a row for the node
  with ``node.listener_processes: N`` (the node hands each connection to the least loaded of N
  processes; see dicom_node.listeners), which matters with ``--associations`` above 1;
- ``storescp -od``: DCMTK's reference SCP, writes each file without fsync;
- Orthanc with its default ``SyncStorageArea: true`` and a 128 KiB maximum PDU;
- for reference, pynetdicom alone: an SCP that answers Success at once and stores nothing; and the same
  SCP on the node's acceptor (``dicom_node.transport``: event-driven, C-STORE requests on its short
  path), the floor under the node's own work (checks, synced spool file, index row);
- for reference, the disk alone: each file written to a new file, fsync'ed, and its folder fsync'ed, one
  after the other, with no network and no DICOM: the floor that durable storage puts under any receiver
  that answers only once an instance is on disk (storescp does not wait for the disk).

Each receiver gets a fresh storage folder per round; the best round is reported. The table prints
instances per second, MB/s of data set bytes sent, and the ratio to storescp. Its last line is not a run:
it adds the node's acceptor's time to the disk's, the best a receiver can do on one association when it
answers only once an instance is on disk and does not write while it receives (with several associations
the two overlap, and the line means less).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import yaml
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.peers import (  # noqa: E402
    PEER_ENVIRONMENT,
    Orthanc,
    free_port,
    run_dcmtk,
    shared_data,
    stop_process_group,
    wait_until,
)

MAX_PDU = 131072


def make_files(folder: Path, copies: int) -> list[Path]:
    """The chest CT ``copies`` times with new UIDs; returns the file paths."""
    sources = sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))
    files = []
    for copy in range(copies):
        study = generate_uid(entropy_srcs=["benchmark", "study", str(copy), str(time.time())])
        series = generate_uid(entropy_srcs=["benchmark", "series", str(copy), str(time.time())])
        for number, source in enumerate(sources):
            dataset = pydicom.dcmread(source)
            dataset.StudyInstanceUID = study
            dataset.SeriesInstanceUID = series
            dataset.SOPInstanceUID = generate_uid(entropy_srcs=[study, str(number)])
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            path = folder / f"{copy:02d}-{number:03d}.dcm"
            dataset.save_as(path)
            files.append(path)
    return files


ASSOCIATIONS = 1


def send(files: list[Path], ae_title: str, port: int) -> float:
    """Seconds that ``ASSOCIATIONS`` storescu processes, each with its share of ``files``, take to send them."""
    started = time.perf_counter()
    shares = [files[start::ASSOCIATIONS] for start in range(ASSOCIATIONS)]
    senders = [
        subprocess.Popen(
            ["storescu", "-aet", "STORESCU", "-aec", ae_title, "-pdu", str(MAX_PDU), "127.0.0.1", str(port)]
            + [str(path) for path in share],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=PEER_ENVIRONMENT,
        )
        for share in shares
    ]
    failures = []
    for sender in senders:
        _, errors = sender.communicate(timeout=1800)
        if sender.returncode != 0:
            failures.append(errors[-2000:])
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"storescu to {ae_title} failed: {failures[0]}")
    return elapsed


def echo_ready(ae_title: str, port: int) -> None:
    wait_until(
        lambda: (
            run_dcmtk(
                "echoscu", "-aet", "STORESCU", "-aec", ae_title, "127.0.0.1", str(port), timeout=10
            ).returncode
            == 0
        ),
        timeout=90,
        what=f"{ae_title} to answer C-ECHO",
    )


def run_node(folder: Path, files: list[Path], listener_processes: int = 1) -> float:
    port = free_port()
    config = {
        "node": {
            "ae_title": "MEDAGENT",
            "port": port,
            "storage": str(folder / "var"),
            "bind": "127.0.0.1",
            "listener_processes": listener_processes,
        },
        "sources": [{"ae_title": "STORESCU"}],
        "models": {"device": "cpu"},
    }
    (folder / "node.yaml").write_text(yaml.safe_dump(config))
    with open(folder / "node.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "--log-level", "WARNING", "serve", "--config",
             str(folder / "node.yaml")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        echo_ready("MEDAGENT", port)
        time.sleep(8)  # let the embedded Celery worker finish starting: it shares the CPUs
        return send(files, "MEDAGENT", port)
    finally:
        stop_process_group(process)


def run_storescp(folder: Path, files: list[Path]) -> float:
    port = free_port()
    (folder / "out").mkdir()
    process = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-pdu", str(MAX_PDU), "-od", str(folder / "out"), str(port)],
        env=PEER_ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        echo_ready("STORESCP", port)
        return send(files, "STORESCP", port)
    finally:
        stop_process_group(process)


def run_orthanc(folder: Path, files: list[Path]) -> float:
    orthanc = Orthanc(folder, settings={"Name": "benchmark", "MaximumPduLength": MAX_PDU}).start()
    try:
        echo_ready(orthanc.ae_title, orthanc.dicom_port)
        return send(files, orthanc.ae_title, orthanc.dicom_port)
    finally:
        orthanc.stop()


_BARE_PYNETDICOM = """
import socket, sys, time
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
ae = AE(ae_title="BARE")
ae.maximum_pdu_size = 1048576
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
ae.add_supported_context(Verification)
def nodelay(event):
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000),
                (evt.EVT_CONN_OPEN, nodelay)])
"""


_BARE_EVENT_DRIVEN = _BARE_PYNETDICOM.replace(
    'ae.start_server(("127.0.0.1", int(sys.argv[1])), ',
    'from dicom_node.transport import start_server\nstart_server(ae, ("127.0.0.1", int(sys.argv[1])), ',
).replace("(evt.EVT_CONN_OPEN, nodelay)])", "(evt.EVT_CONN_OPEN, nodelay)])\nwhile True: time.sleep(60)")


def run_bare_pynetdicom(folder: Path, files: list[Path], script: str = _BARE_PYNETDICOM) -> float:
    """pynetdicom answering Success at once, storing nothing: the floor under the node's own work."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(port)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        echo_ready("BARE", port)
        return send(files, "BARE", port)
    finally:
        stop_process_group(process)


def run_disk_alone(folder: Path, files: list[Path]) -> float:
    """Seconds to write each file durably (new file, fsync, folder fsync), one after the other."""
    contents = [path.read_bytes() for path in files]
    started = time.perf_counter()
    for number, content in enumerate(contents):
        descriptor = os.open(folder / f"{number:05d}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(descriptor, content)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return time.perf_counter() - started


RECEIVERS: dict[str, Callable[[Path, list[Path]], float]] = {
    "storescp (DCMTK, -od, no fsync)": run_storescp,
    "Orthanc 1.10 (SyncStorageArea)": run_orthanc,
    "MedAgent node (fsync + index)": run_node,
    # "node, N listener processes": added by --node-processes N
    "pynetdicom alone (stores nothing)": run_bare_pynetdicom,
    "same, the node's acceptor": lambda folder, files: run_bare_pynetdicom(folder, files, _BARE_EVENT_DRIVEN),
    "disk alone (write + fsync, no net)": run_disk_alone,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of the 55-slice CT (default 4)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs per receiver; the best is kept (default 2)"
    )
    parser.add_argument("--associations", type=int, default=1, help="storescu processes at once (default 1)")
    parser.add_argument(
        "--node-processes",
        type=int,
        default=1,
        help="also run the node with node.listener_processes N (a row of its own; default: not run)",
    )
    arguments = parser.parse_args(argv)
    if arguments.node_processes > 1:
        processes = arguments.node_processes
        RECEIVERS[f"node, {processes} listener processes"] = lambda folder, files: run_node(
            folder, files, processes
        )
    global ASSOCIATIONS
    ASSOCIATIONS = arguments.associations
    with tempfile.TemporaryDirectory(prefix="medagent-bench-") as temporary:
        root = Path(temporary)
        (root / "files").mkdir()
        files = make_files(root / "files", arguments.copies)
        megabytes = sum(path.stat().st_size for path in files) / 1e6
        results: dict[str, list[float]] = {}
        for round_number in range(arguments.rounds):
            for name, run in RECEIVERS.items():
                folder = root / f"{name.split()[0]}-{round_number}"
                folder.mkdir()
                results.setdefault(name, []).append(run(folder, files))
                shutil.rmtree(folder, ignore_errors=True)
    reference = min(results["storescp (DCMTK, -od, no fsync)"])
    print(
        f"\n{len(files)} CT instances, {megabytes:.1f} MB, {ASSOCIATIONS} storescu association(s) at once"
        " on 127.0.0.1\n"
    )
    print(f"{'receiver':34} {'best s':>8} {'median s':>9} {'inst/s':>8} {'MB/s':>7} {'vs storescp':>12}")
    for name, times in results.items():
        best = min(times)
        print(
            f"{name:34} {best:8.2f} {statistics.median(times):9.2f} {len(files) / best:8.1f}"
            f" {megabytes / best:7.1f} {reference / best:11.2f}x"
        )
    # a receiver that answers only once an instance is on disk, on one association, first receives it and
    # then writes it durably: at best the two reference rows' times add up
    floor = min(results["same, the node's acceptor"]) + min(results["disk alone (write + fsync, no net)"])
    print(
        f"{'floor: acceptor + disk, in series':34} {floor:8.2f} {'':9} {len(files) / floor:8.1f}"
        f" {megabytes / floor:7.1f} {reference / floor:11.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
