"""The prebuilt OHIF Viewer: ``npm pack @ohif/app@3.13.2``, integrity checked against a pinned hash, ``dist/`` unpacked.

``npm install @ohif/app`` fails (a missing ``@ohif/i18n`` version), so the tarball is fetched with
``npm pack`` and only its ``dist/`` is unpacked into ``tests/ohif/.cache/`` (ignored by git). Nothing else is
downloaded: the viewer never reaches the network at run time. Stdlib only, so that ``make setup`` can run it
as ``python3 tests/ohif/ohif_dist.py`` before the virtual environment exists.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
#: Subresource integrity of ohif-app-3.13.2.tgz as published on registry.npmjs.org.
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)
CACHE = Path(__file__).resolve().parent / ".cache"
_COMPLETE = ".unpacked"


def integrity_of(path: Path) -> str:
    """The ``sha512-<base64>`` subresource integrity string of a file, as npm writes it."""
    digest = hashlib.sha512()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def dist_folder(cache: Path = CACHE) -> Path:
    return cache / f"ohif-app-{OHIF_VERSION}" / "dist"


def fetch_tarball(cache: Path = CACHE) -> Path:
    """``npm pack`` the pinned version into ``cache`` (reused when present) and check its integrity."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"ohif-app-{OHIF_VERSION}.tgz"
    if not tarball.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed (Node.js 20 and npm are needed to fetch OHIF)")
        completed = subprocess.run(
            [npm, "pack", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "--json", "--pack-destination", str(cache)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"npm pack {OHIF_PACKAGE}@{OHIF_VERSION} failed: {completed.stderr[-2000:]}")
        packed = cache / json.loads(completed.stdout)[0]["filename"]
        if packed != tarball:
            packed.replace(tarball)
    found = integrity_of(tarball)
    if found != OHIF_INTEGRITY:
        tarball.unlink()
        raise RuntimeError(
            f"Invalid '{tarball.name}' integrity {found!r} - expected the pinned {OHIF_INTEGRITY!r}; removed it"
        )
    return tarball


def ensure_dist(cache: Path = CACHE) -> Path:
    """The unpacked OHIF ``dist/`` folder, fetched and unpacked on first use."""
    dist = dist_folder(cache)
    if (dist / _COMPLETE).exists():
        return dist
    tarball = fetch_tarball(cache)
    target = dist.parent
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with tarfile.open(tarball, "r:gz") as archive:
        members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
        for member in members:
            member.name = member.name.removeprefix("package/")
        archive.extractall(target, members=members, filter="data")
    (dist / _COMPLETE).write_text(OHIF_INTEGRITY + "\n")
    return dist


if __name__ == "__main__":
    print(ensure_dist(), file=sys.stdout)
