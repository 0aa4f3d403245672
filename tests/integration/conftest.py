"""Fixtures of the integration tests: a bare Storage SCP (no tracker, no worker) on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.index import Index
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool
from tests.conftest import node_settings


def start_scp(storage: Path, **node: object) -> StorageSCP:
    """Start the node's SCP alone, with ``node`` settings overriding the test defaults; stop it yourself."""
    settings = node_settings(storage, node=node).with_absolute_storage()
    server = StorageSCP(settings, Index(storage / "index.sqlite3"), Spool(storage))
    server.start()
    return server


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StorageSCP]:
    server = start_scp(tmp_path / "node")
    try:
        yield server
    finally:
        server.stop()
