"""The admin side of a running node: its configuration store, a watcher of the file, the HTTP API.

``Node.start`` starts an ``AdminService`` and ``Node.stop`` stops it. The watcher reads the
configuration file again when another process (``medagent ae add``, an editor) changed it, and applies it
without a restart. The API is served by uvicorn in a thread, on ``admin.bind:admin.port``, only when a
token is configured (``admin.token`` or ``MEDAGENT_ADMIN_TOKEN``): without one it is not started at all.
uvicorn's access log names method, path and status, never headers, so the token is not logged.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.admin.config_store import ConfigStore

if TYPE_CHECKING:
    from dicom_node.node import Node

__all__ = ["AdminService"]
logger = logging.getLogger(__name__)


class AdminService:
    """Config store, file watcher and HTTP API of ``node``; ``config_file`` None keeps edits in memory."""

    def __init__(self, node: Node, config_file: Path | None, watch_seconds: float = 1.0) -> None:
        self.node = node
        self.store = ConfigStore(config_file, settings=node.settings, apply=node.reconfigure)
        self.watch_seconds = watch_seconds
        self.app: Any = None
        self._server: Any = None
        self._socket: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        return f"AdminService(store={self.store!r}, port={self.port})"

    @property
    def port(self) -> int | None:
        """The port the API listens on; None when it is not started."""
        return None if self._socket is None else int(self._socket.getsockname()[1])

    def start(self) -> None:
        """Start the watcher and, with a token, the API; ``OSError`` when the API's port cannot be bound."""
        if self.store.persistent:
            self._thread(self._watch, "medagent-config-watch")
        else:
            logger.info("admin: the node has no configuration file; admin changes last until it stops")
        section = self.node.settings.admin
        if section.token is None:
            logger.warning(
                "admin API not started: no token (set admin.token in the configuration or MEDAGENT_ADMIN_TOKEN)"
            )
            return
        import uvicorn

        from dicom_node.admin.app import create_app

        self.app = create_app(self.node, self.store, section.token.get_secret_value())
        family = socket.AF_INET6 if ":" in section.bind else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((section.bind, section.port))
        except OSError:
            listener.close()
            self._stopping.set()
            raise
        listener.listen(128)
        self._socket = listener
        config = uvicorn.Config(
            self.app, log_config=None, access_log=True, lifespan="off", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread(lambda: self._server.run(sockets=[listener]), "medagent-admin-api")
        deadline = time.monotonic() + 30
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        logger.info("admin API on http://%s:%d (OpenAPI at /openapi.json)", section.bind, self.port)

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        for thread in self._threads:
            thread.join(timeout=30)
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watch(self) -> None:
        while not self._stopping.wait(self.watch_seconds):
            try:
                self.store.reload_if_changed()
            except Exception:
                logger.exception("watching %s failed; trying again", self.store.path)
