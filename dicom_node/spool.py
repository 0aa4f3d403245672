"""Durable storage of received instances: ``spool/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``.

A file is written as ``.dcm.part`` with ``O_DSYNC`` (the write returns once the data is on disk, as with
an ``fdatasync``), renamed and its folder fsync'ed, so that an instance the SCP acknowledged survives a
crash or power loss. The SCP writes a new instance to ``spool/.incoming/`` first (``open_staged`` and
``write_synced``), while it still checks the data set, and renames it into place once the checks pass
(``commit``) or deletes it (``discard``); what is left there after a crash was never acknowledged. When an
instance arrives again with different content, the file it replaces is kept beside it as
``<SOPUID>.v<N>.dcm`` (N = 1 for the first version); a version file is never overwritten. Rejected
objects go to ``quarantine/`` with a ``.reason.txt``.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dicom_node.uids import uid_for_path

Buffer = bytes | bytearray | memoryview
_quarantine_numbers = itertools.count(1)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _parts(data: Buffer | Sequence[Buffer]) -> Sequence[Buffer]:
    return (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data


@dataclass(frozen=True)
class OpenFile:
    """A ``.part`` file opened for ``write_synced``: its path and descriptor."""

    path: Path
    descriptor: int


def open_partial(path: Path, make_folder: bool = True) -> OpenFile:
    """Create ``<path>.part`` for writing with ``O_DSYNC``: each write returns once its data, and what is
    needed to read it back (size, blocks), is on disk, as if ``fdatasync`` followed it."""
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    return OpenFile(partial, os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DSYNC, 0o640))


def write_synced(file: OpenFile, data: Buffer | Sequence[Buffer]) -> Path:
    """Write ``data`` (one buffer or several, in order) to a file of ``open_partial`` and close it; return
    its path. One ``writev`` does it (more only if the kernel writes less): a single call that lets go of
    the GIL for the whole write and sync, so that it runs beside Python work in other threads."""
    try:
        views = [view for view in (memoryview(part).cast("B") for part in _parts(data)) if view.nbytes]
        while views:
            written = os.writev(file.descriptor, views)
            while views and written >= views[0].nbytes:
                written -= views[0].nbytes
                views.pop(0)
            if views:
                views[0] = views[0][written:]
    except BaseException:
        os.close(file.descriptor)
        file.path.unlink(missing_ok=True)
        raise
    os.close(file.descriptor)
    return file.path


def _write_partial(path: Path, data: Buffer | Sequence[Buffer], make_folder: bool = True) -> Path:
    """Write ``data`` (one buffer or several, in order) durably to ``<path>.part``; return that path."""
    return write_synced(open_partial(path, make_folder), data)


def write_durably(
    path: Path, data: Buffer | Sequence[Buffer], *, sync_directory: bool = True, make_folder: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically: temporary file, fsync, rename, fsync of the folder.

    ``data`` is one buffer or a sequence of buffers written one after the other (no copy is made). With
    ``sync_directory=False`` the caller fsyncs the folder (``sync_directory(path)``) before it relies on
    the rename, e.g. while it does other work that waits on the disk.
    """
    partial = _write_partial(path, data, make_folder)
    os.replace(partial, path)
    if sync_directory:
        _fsync_directory(path.parent)


def sync_directory(path: Path) -> None:
    """Make the creation or rename of ``path`` durable: fsync the folder that holds it."""
    _fsync_directory(path.parent)


class Spool:
    """The spool and quarantine folders under the node's storage root."""

    def __init__(self, storage: str | os.PathLike[str]) -> None:
        self.root = Path(storage) / "spool"
        self.quarantine_root = Path(storage) / "quarantine"
        self.incoming = self.root / ".incoming"
        self.root.mkdir(parents=True, exist_ok=True)
        self.quarantine_root.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(exist_ok=True)
        self._folders: set[Path] = set()  # series folders known to exist (made once, not per instance)

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
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        data: Buffer | Sequence[Buffer],
        *,
        sync_directory: bool = True,
    ) -> Path:
        """Durably store one encoded instance (preamble, file meta and data set) and return its path.

        With ``sync_directory=False`` the file is fsync'ed and renamed, and the caller must call
        ``sync_directory(path)`` before the instance counts as stored.
        """
        path = self.path_for(study_instance_uid, series_instance_uid, sop_instance_uid)
        known = path.parent in self._folders
        try:
            write_durably(path, data, sync_directory=sync_directory, make_folder=not known)
        except FileNotFoundError:
            if not known:
                raise
            self._folders.discard(path.parent)  # removed behind our back: make it again
            write_durably(path, data, sync_directory=sync_directory)
        if len(self._folders) > 10_000:
            self._folders.clear()
        self._folders.add(path.parent)
        return path

    def open_staged(self) -> OpenFile:
        """A new file in ``.incoming/`` for an instance whose UIDs are not yet known to be valid; write it
        with ``write_synced``."""
        path = self.incoming / uuid.uuid4().hex
        try:
            return open_partial(path, make_folder=False)
        except FileNotFoundError:  # .incoming was removed (or a file system mounted over the spool)
            return open_partial(path, make_folder=True)

    def commit(
        self,
        staged: Path,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        *,
        sync_directory: bool = True,
    ) -> Path:
        """Rename a staged file to the instance's place and return that path (see ``store``)."""
        path = self.path_for(study_instance_uid, series_instance_uid, sop_instance_uid)
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            if len(self._folders) > 10_000:
                self._folders.clear()
            self._folders.add(path.parent)
        try:
            os.replace(staged, path)
        except FileNotFoundError:
            if staged.exists():  # the folder was removed behind our back
                self._folders.discard(path.parent)
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, path)
            else:
                raise
        if sync_directory:
            _fsync_directory(path.parent)
        return path

    def discard(self, staged: Path) -> None:
        staged.unlink(missing_ok=True)

    def clear_incoming(self) -> int:
        """Delete what a stopped SCP left staged (never acknowledged); return how many files."""
        removed = 0
        for path in self.incoming.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def store_version(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        data: Buffer | Sequence[Buffer],
        *,
        previous: Path,
        version: int,
    ) -> tuple[Path, Path | None]:
        """Store new content for an instance and keep the file it replaces; return (path, kept file).

        ``previous`` is the current file of the instance (it may lie in another study or series folder),
        ``version`` its version number: it is kept as ``<SOPUID>.v<version>.dcm`` beside itself (the next
        free number if that exists). At every moment the instance has a complete current file.
        """
        path = self.path_for(study_instance_uid, series_instance_uid, sop_instance_uid)
        partial = _write_partial(path, data)
        kept: Path | None = None
        try:
            if previous.exists():
                kept = self._keep(previous, sop_instance_uid, version)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
        if kept is not None and previous != path:
            previous.unlink(missing_ok=True)
            _fsync_directory(previous.parent)
        return path, kept

    def _keep(self, previous: Path, sop_instance_uid: str, version: int) -> Path:
        stem = uid_for_path(sop_instance_uid)
        for number in itertools.count(max(version, 1)):
            kept = previous.with_name(f"{stem}.v{number}.dcm")
            try:
                os.link(previous, kept)
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links: copy it
                if kept.exists():
                    continue
                write_durably(kept, previous.read_bytes())
            _fsync_directory(kept.parent)
            return kept
        raise AssertionError("unreachable")

    def quarantine(self, data: Buffer | Sequence[Buffer] | None, reason: str, hint: str = "object") -> Path:
        """Keep a rejected object with a ``.reason.txt`` beside it; never raises on a full disk.

        With ``data`` None only the reason is written (an object refused by policy is not kept).
        """
        stamp = f"{time.time():.6f}".replace(".", "")
        safe_hint = "".join(c for c in hint if c.isalnum() or c in ".-_")[:64] or "object"
        path = self.quarantine_root / f"{stamp}-{next(_quarantine_numbers)}-{safe_hint}.dcm"
        try:
            if data is not None:
                write_durably(path, data)
            write_durably(path.with_suffix(".reason.txt"), (reason + "\n").encode("utf-8"))
        except OSError:
            return path
        return path
