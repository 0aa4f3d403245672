"""Fixtures for the OHIF checks: the viewer's files, Orthanc with DICOMweb behind one origin, a browser, and
a folder of artifacts that outlives the test (``var/test-artifacts/ohif/<test>/``)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.peers import Orthanc
from tests.ohif.browser import OhifBrowser
from tests.ohif.ohif_dist import ensure_dist
from tests.ohif.server import ViewerServer

logger = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[2]
STABLE_ARTIFACTS = REPOSITORY / "var" / "test-artifacts" / "ohif"


@dataclass
class OhifPeer:
    """Orthanc (the PACS, with DICOMweb) and OHIF served with it on one loopback origin."""

    orthanc: Orthanc
    viewer: ViewerServer


@pytest.fixture(scope="session")
def ohif_dist() -> Path:
    return ensure_dist()


@pytest.fixture(scope="module")
def ohif_peer(ohif_dist: Path, dicomweb_orthanc: Orthanc) -> Iterator[OhifPeer]:
    """OHIF in front of the session's Orthanc, the one the chest CT round trip delivered to."""
    with ViewerServer(ohif_dist, f"{dicomweb_orthanc.url}/dicom-web") as viewer:
        logger.info("OHIF on %s, Orthanc DICOMweb on %s/dicom-web", viewer.url, dicomweb_orthanc.url)
        yield OhifPeer(dicomweb_orthanc, viewer)


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """Screenshots and logs of one test: written under its tmp dir, copied to var/test-artifacts/ohif/."""
    folder = tmp_path / "ohif"
    folder.mkdir()
    yield folder
    stable = STABLE_ARTIFACTS / request.node.name
    shutil.rmtree(stable, ignore_errors=True)
    shutil.copytree(folder, stable)
    logger.info("OHIF artifacts of %s: %s", request.node.name, stable)


@pytest.fixture
def browser(ohif_peer: OhifPeer, artifacts: Path) -> Iterator[OhifBrowser]:
    with OhifBrowser(ohif_peer.viewer.url, artifacts) as driven:
        yield driven
    exchanges = ohif_peer.viewer.take_exchanges()
    slow = sorted(exchanges, key=lambda e: -e.milliseconds)[:10]
    for exchange in slow:
        logger.info("slowest requests: %s %s -> %s, %d B, %.0f ms", *vars(exchange).values())
    (artifacts / "browser-events.json").write_text(json.dumps(driven.events, indent=1))
    (artifacts / "timings.json").write_text(
        json.dumps({"commands_ms": driven.timings, "requests": len(exchanges)}, indent=1)
    )
    (artifacts / "requests.json").write_text(json.dumps([vars(e) for e in exchanges], indent=0))
