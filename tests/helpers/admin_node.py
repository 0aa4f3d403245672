"""A running node with its admin API on loopback, started from a YAML file that the API edits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from config import load_settings
from tests.helpers.peers import free_port


@dataclass
class AdminNode:
    """A started node, a client of its admin API that sends the token, and the node's configuration file."""

    node: Any
    client: httpx.Client
    config_file: Path

    def settings(self):
        """The configuration file as it is now (changes made through the API included)."""
        return load_settings(self.config_file, environ={})

    def dicom_port(self) -> int:
        """The port the node's SCP listens on now."""
        return self.node.scp.port


@contextmanager
def admin_node(
    folder: Path,
    token: str,
    *,
    delivery_timeout_seconds: float,
    client_timeout_seconds: float,
    comment: str = "",
) -> Iterator[AdminNode]:
    """Start a node from ``folder/node.yaml``: AE MEDAGENT on a free port, storage in ``folder/var``, STORESCU
    allowed to send, no destinations or routes, quick delivery retries, the admin API on a free port with
    ``token``; ``comment`` (without ``#``), if any, heads the file. Stops the node on exit."""
    from dicom_node.node import Node

    config = {
        "node": {
            "ae_title": "MEDAGENT",
            "port": free_port(),
            "bind": "127.0.0.1",
            "storage": str(folder / "var"),
        },
        "sources": [{"ae_title": "STORESCU"}],
        "destinations": [],
        "routes": [],
        "delivery": {
            "retry_initial_seconds": 0.5,
            "retry_max_seconds": 2,
            "timeout_seconds": delivery_timeout_seconds,
        },
        "models": {"device": "cpu"},
        "admin": {"bind": "127.0.0.1", "port": 0, "token": token},
    }
    path = folder / "node.yaml"
    path.write_text((f"# {comment}\n" if comment else "") + yaml.safe_dump(config, sort_keys=False))
    node = Node(load_settings(path, environ={}), poll_seconds=0.2, config_file=path)
    node.start()
    try:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{node.admin.port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=client_timeout_seconds,
        )
        try:
            yield AdminNode(node, client, path)
        finally:
            client.close()
    finally:
        node.stop()
