"""Durable storage of received instances: ``spool/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``.

A file is written as ``.dcm.part``, fsync'ed, renamed and its folder fsync'ed, so that an instance the
SCP acknowledged survives a crash or power loss. Rejected objects go to ``quarantine/`` with the reason.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dicom_node.uids import uid_for_path


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(descriptor, view)
            view = view[written:]
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        partial.unlink(missing_ok=True)
        raise
    os.close(descriptor)
    os.replace(partial, path)
    _fsync_directory(path.parent)


class Spool:
    """The spool and quarantine folders under the node's storage root."""

    def __init__(self, storage: str | os.PathLike[str]) -> None:
        self.root = Path(storage) / "spool"
        self.quarantine_root = Path(storage) / "quarantine"
        self.root.mkdir(parents=True, exist_ok=True)
        self.quarantine_root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Spool(root={str(self.root)!r})"

    def path_for(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives; raises ``ValueError`` naming the UID when one is not a valid UID."""
        return (
            self.root
            / uid_for_path(study_instance_uid)
            / uid_for_path(series_instance_uid)
            / f"{uid_for_path(sop_instance_uid)}.dcm"
        )

    def store(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str, data: bytes
    ) -> Path:
        """Durably store one encoded instance (preamble, file meta and data set) and return its path."""
        path = self.path_for(study_instance_uid, series_instance_uid, sop_instance_uid)
        write_durably(path, data)
        return path

    def quarantine(self, data: bytes, reason: str, hint: str = "object") -> Path:
        """Keep a rejected object with a ``.reason.txt`` beside it; never raises on a full disk."""
        stamp = f"{time.time():.6f}".replace(".", "")
        safe_hint = "".join(c for c in hint if c.isalnum() or c in ".-_")[:64] or "object"
        path = self.quarantine_root / f"{stamp}-{safe_hint}.dcm"
        try:
            write_durably(path, data)
            write_durably(path.with_suffix(".reason.txt"), (reason + "\n").encode("utf-8"))
        except OSError:
            return path
        return path
