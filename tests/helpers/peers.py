"""Real peers for tests, on 127.0.0.1 only: Orthanc (the PACS) and DCMTK command-line tools."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
#: DCMTK 3.6.7 leaves Nagle on (about 40 ms per C-STORE on loopback); TCP_NODELAY=1 turns it off.
PEER_ENVIRONMENT = dict(os.environ, TCP_NODELAY="1")


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, wherever the repository is cloned beside ``shared``."""
    candidates = [DATA / name, Path.cwd().parent / "shared" / "data" / name]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"shared data folder {name!r} not found (looked in {[str(c) for c in candidates]})"
    )


def stop_process_group(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM the process group that ``process`` leads (started with ``start_new_session=True``), wait up
    to ``timeout`` seconds, then SIGKILL what is left of the group (a node's embedded worker, say)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Orthanc:
    """A private Orthanc on free loopback ports with its own storage, stopped by its pid."""

    def __init__(
        self, folder: Path, ae_title: str = "ORTHANC", dicomweb: bool = False, settings: dict | None = None
    ) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.dicomweb = dicomweb
        self.settings = dict(settings or {})  # Orthanc configuration keys that override the defaults below

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Orthanc:
        binary = shutil.which("Orthanc")
        if binary is None:
            raise RuntimeError("Orthanc is not installed (apt-get install orthanc)")
        self.folder.mkdir(parents=True, exist_ok=True)
        configuration = {
            "Name": "medagent-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "StableAge": 1,
            "HttpTimeout": 60,
            "DicomScuTimeout": 30,
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"] if self.dicomweb else [],
            **self.settings,
        }
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(configuration))
        log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen(
            [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=PEER_ENVIRONMENT
        )
        log.close()
        wait_until(self._answers, 30, what="Orthanc to answer on HTTP")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            self.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def request(
        self, method: str, path: str, body: bytes | dict | list | None = None, timeout: float = 120
    ) -> Any:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
        if response.headers.get_content_type() == "application/json":
            return json.loads(payload)
        return payload

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, path: Path) -> dict:
        return self.request("POST", "/instances", path.read_bytes())

    def add_modality(self, name: str, ae_title: str, port: int) -> None:
        self.request("PUT", f"/modalities/{name}", {"AET": ae_title, "Host": "127.0.0.1", "Port": port})

    def instances_of_study(self, study_instance_uid: str) -> list[dict]:
        found = self.request(
            "POST",
            "/tools/find",
            {"Level": "Instance", "Query": {"StudyInstanceUID": study_instance_uid}, "Expand": True},
        )
        return found

    def instance_file(self, orthanc_id: str) -> bytes:
        return self.get(f"/instances/{orthanc_id}/file")


def run_dcmtk(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(arguments), capture_output=True, text=True, timeout=timeout, env=PEER_ENVIRONMENT
    )


def dciodvfy_errors(path: Path) -> tuple[list[str], str]:
    """``(error lines, full output)`` of dicom3tools' dciodvfy for one file."""
    completed = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    output = completed.stdout + completed.stderr
    return [line for line in output.splitlines() if line.startswith("Error")], output
