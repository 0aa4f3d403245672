"""OHIF's ``dist/`` and Orthanc's DICOMweb root on one loopback origin (Orthanc sends no CORS headers).

``/dicom-web/...`` is forwarded to the DICOMweb root given (keeping the browser's ``Host`` header, so the
BulkDataURIs Orthanc writes point back at this origin); ``/app-config.js`` is ours; any other path is a file
of ``dist/``, or ``index.html`` for the viewer's own routes (``/viewer``, ``/segmentation``...).
Every request is recorded (method, path, status, bytes, milliseconds) for the test log.

Run it by hand to look at a study: ``python3 tests/ohif/server.py --dicomweb http://127.0.0.1:8042/dicom-web``.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import mimetypes
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
APP_CONFIG = HERE / "app-config.js"
PROXY_PREFIX = "/dicom-web"
_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
}
_FORWARDED_REQUEST_HEADERS = ("accept", "content-type", "range", "host", "accept-encoding")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


@dataclass(frozen=True)
class Exchange:
    """One request the server answered."""

    method: str
    path: str
    status: int
    size: int
    milliseconds: float


class ViewerServer:
    """A threaded HTTP server on 127.0.0.1: OHIF's files plus a reverse proxy to a DICOMweb root."""

    def __init__(self, dist: Path, dicomweb_root: str, port: int = 0, app_config: Path = APP_CONFIG) -> None:
        upstream = urllib.parse.urlsplit(dicomweb_root.rstrip("/"))
        if upstream.scheme != "http" or not upstream.hostname:
            raise ValueError(f"Invalid 'dicomweb_root' value {dicomweb_root!r} - must be an http:// URL")
        if not (dist / "index.html").exists():
            raise ValueError(f"Invalid 'dist' value '{dist}' - it holds no index.html")
        self.dist = dist.resolve()
        self.app_config = app_config
        self.upstream_host = upstream.hostname
        self.upstream_port = upstream.port or 80
        self.upstream_path = upstream.path
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ViewerServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def take_exchanges(self) -> list[Exchange]:
        """The requests answered since the last call."""
        with self._lock:
            taken, self.exchanges = self.exchanges, []
        return taken


def _handler_for(server: ViewerServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            logger.debug("ohif-server: " + format, *args)

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_POST(self) -> None:
            self._answer(send_body=True)

        def _answer(self, send_body: bool) -> None:
            started = time.perf_counter()
            path = urllib.parse.urlsplit(self.path).path
            try:
                if path == PROXY_PREFIX or path.startswith(PROXY_PREFIX + "/"):
                    status, size = self._proxy(send_body)
                else:
                    status, size = self._static(path, send_body)
            except (ConnectionError, OSError, http.client.HTTPException) as exc:
                logger.warning("ohif-server: %s %s failed: %s", self.command, self.path, exc)
                status, size = 502, 0
                try:
                    self._send(502, b"bad gateway\n", "text/plain", send_body)
                except OSError:
                    pass
            server.record(
                Exchange(self.command, self.path, status, size, (time.perf_counter() - started) * 1e3)
            )

        def _send(self, status: int, body: bytes, content_type: str, send_body: bool, extra=()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            # Cross-origin isolation lets the viewer use SharedArrayBuffer; everything it loads is same-origin.
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _static(self, path: str, send_body: bool) -> tuple[int, int]:
            if path == "/app-config.js":
                body = server.app_config.read_bytes()
                self._send(200, body, "text/javascript", send_body, [("Cache-Control", "no-store")])
                return 200, len(body)
            relative = urllib.parse.unquote(path).lstrip("/")
            candidate = (server.dist / relative).resolve()
            if not candidate.is_relative_to(server.dist):
                self._send(404, b"not found\n", "text/plain", send_body)
                return 404, 0
            if not candidate.is_file():
                if Path(relative).suffix:  # a missing asset, not a route of the single-page app
                    self._send(404, b"not found\n", "text/plain", send_body)
                    return 404, 0
                candidate = server.dist / "index.html"
            content_type = _TYPES.get(candidate.suffix) or mimetypes.guess_type(candidate.name)[0]
            body = candidate.read_bytes()
            self._send(200, body, content_type or "application/octet-stream", send_body)
            return 200, len(body)

        def _proxy(self, send_body: bool) -> tuple[int, int]:
            target = server.upstream_path + self.path[len(PROXY_PREFIX) :]
            headers = {k: v for k, v in self.headers.items() if k.lower() in _FORWARDED_REQUEST_HEADERS}
            length = int(self.headers.get("Content-Length") or 0)
            request_body = self.rfile.read(length) if length else None
            connection = http.client.HTTPConnection(server.upstream_host, server.upstream_port, timeout=120)
            try:
                connection.request(self.command, target, body=request_body, headers=headers)
                response = connection.getresponse()
                body = response.read()
                passed = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            finally:
                connection.close()
            self.send_response(response.status)
            for name, value in passed:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
            self.end_headers()
            if send_body:
                self.wfile.write(body)
            return response.status, len(body)

    return Handler


def main() -> None:
    from ohif_dist import ensure_dist  # run as a script from any folder: tests/ohif is on sys.path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dicomweb", default="http://127.0.0.1:8042/dicom-web", help="Orthanc's DICOMweb root"
    )
    parser.add_argument("--port", type=int, default=3000)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with ViewerServer(ensure_dist(), arguments.dicomweb, arguments.port) as viewer:
        print(f"OHIF Viewer 3.13.2 on {viewer.url}/ (DICOMweb from {arguments.dicomweb}); Ctrl-C stops it")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
