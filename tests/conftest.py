"""Shared fixtures: settings for a node on a free loopback port, a running node, a private Orthanc."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from config.settings import parse_settings
from tests.helpers.peers import Orthanc, free_port


def node_settings(storage: Path, **sections: Any):
    """Settings for a test node: free port, storage under ``storage``, quick completion, quick retries."""
    data: dict[str, Any] = {
        "node": {"ae_title": "MEDAGENT", "port": free_port(), "bind": "127.0.0.1", "storage": str(storage)},
        "sources": [{"ae_title": "STORESCU"}, {"ae_title": "ORTHANC"}],
        "destinations": [],
        "routes": [],
        "delivery": {"retry_initial_seconds": 0.5, "retry_max_seconds": 2, "timeout_seconds": 10},
        "models": {"device": "cpu"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_settings(data, environ={})


@contextmanager
def running_node(settings) -> Iterator[Any]:
    from dicom_node.node import Node

    node = Node(settings, poll_seconds=0.2)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dicomweb_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc with the DICOMweb plugin for the session: the PACS of the round trip and of OHIF."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc-dicomweb"), dicomweb=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chest_ct_round_trip(dicomweb_orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory):
    """Issue 2's round trip, run once: tests/helpers/round_trip.py."""
    from tests.helpers.round_trip import chest_ct_round_trip as run

    return run(dicomweb_orthanc, tmp_path_factory.mktemp("round-trip"))


@pytest.fixture(autouse=True)
def _quiet_libraries() -> None:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
