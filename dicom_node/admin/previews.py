"""Pictures of a job for the web console: its series' frames with its masks and boxes, and its key images.

A frame is rendered as the key image (SC) renders its key frame (``dicom_node.encode.sc``): through the
display window (the lung window for CT lungs), MONOCHROME1 inverted, masks filled and outlined in their
segment colours (the SEG's), boxes of that frame drawn, a legend. The masks and boxes are the job's stored
``ToolResult``s (``results/<job>/action<N>``) of the actions that ended ``ok``, aligned to the series as
``dicom_node.load`` loads it (the masks of a label several actions returned are joined). Key images are the
job's SC outputs, decoded from the stored files.

A console steps through the frames one by one, so ``JobPictures`` of the last few jobs are kept in memory
and made again when the job's results change (a running job's next action ends).
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from agent_core.protocol import Plan
from config import Settings
from dicom_node import pipeline
from dicom_node.admin.errors import EntityConflict, EntityNotFound
from dicom_node.encode.common import frame_sources, segment_color
from dicom_node.encode.sc import (
    display_window,
    key_slice_of_result,
    render_colour,
    render_grey,
    render_key_image,
    shows_colour,
)
from dicom_node.encode.seg import checked_masks
from dicom_node.errors import EncodeError
from dicom_node.index import Index
from dicom_node.load import Volume
from tools.base import Box, ToolResult, ToolStatus

__all__ = ["JobPictures", "PictureCache", "key_image_png"]
logger = logging.getLogger(__name__)


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


@dataclass(frozen=True)
class JobPictures:
    """A job's series as loaded, the masks (label -> boolean volume) and boxes its actions returned."""

    job_id: str
    volume: Volume
    masks: dict[str, np.ndarray]
    boxes: list[Box]

    @property
    def frames(self) -> int:
        return int(self.volume.array.shape[0])

    @property
    def key_frame(self) -> int:
        """The frame the job's key image shows (most mask pixels, else most box area, else the middle)."""
        if not self.masks and not self.boxes:
            return self.frames // 2
        return key_slice_of_result(self.masks, self.boxes, self.frames)

    def summary(self) -> dict[str, Any]:
        """What the console needs to step through the frames: their count and sources, the key frame, each
        structure's colour, voxel count and the frames it is on, the boxes."""
        colors = {label: segment_color(number) for number, label in enumerate(self.masks)}
        for box in sorted(self.boxes, key=lambda b: b.label):
            colors.setdefault(box.label, segment_color(len(colors)))
        structures = [
            {
                "label": label,
                "color": list(colors[label]),
                "voxels": int(np.count_nonzero(mask)),
                "frames": [int(i) for i in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))],
            }
            for label, mask in self.masks.items()
        ]
        return {
            "job_id": self.job_id,
            "series_instance_uid": self.volume.series_instance_uid,
            "frames": self.frames,
            "key_frame": self.key_frame,
            "sop_instance_uids": [str(source.SOPInstanceUID) for source, _ in frame_sources(self.volume)],
            "structures": structures,
            "boxes": [
                {
                    "label": box.label,
                    "frame": box.frame,
                    "xyxy": list(box.xyxy),
                    "color": list(colors[box.label]),
                }
                for box in self.boxes
            ],
        }

    def frame_png(self, frame: int, overlay: bool = True) -> bytes:
        """Frame ``frame`` (0-based, in slice order) as PNG; with ``overlay`` the masks, boxes and legend
        drawn as on the key image, without them in the same window. ``EntityNotFound`` out of range."""
        if not 0 <= frame < self.frames:
            raise EntityNotFound(f"frame (0..{self.frames - 1}) of job {self.job_id}", str(frame))
        if overlay:
            return _png(render_key_image(self.volume, self.masks, self.boxes, frame))
        if shows_colour(self.volume, frame):
            return _png(render_colour(self.volume, frame))
        labels = [*self.masks, *(box.label for box in self.boxes)]
        return _png(render_grey(self.volume, frame, display_window(self.volume, labels, frame)))


def _job_results(settings: Settings, index: Index, job_id: str) -> tuple[Any, list[tuple[int, Path]]]:
    job = index.job(job_id)
    if job is None:
        raise EntityNotFound("job", job_id)
    stored = []
    for number in range(len(Plan.from_json(job["plan"]).actions)):
        path = pipeline._results_path(settings, job_id, number)
        if path.with_suffix(".json").exists():
            stored.append((number, path))
    return job, stored


def _fingerprint(stored: list[tuple[int, Path]]) -> tuple[tuple[int, int], ...]:
    fingerprint = []
    for number, path in stored:
        try:
            fingerprint.append((number, path.with_suffix(".json").stat().st_mtime_ns))
        except OSError:
            continue
    return tuple(fingerprint)


class PictureCache:
    """``JobPictures`` of the last ``size`` jobs asked for; thread-safe (the API serves from a pool)."""

    def __init__(self, settings: Settings, index: Index, size: int = 2) -> None:
        self.settings = settings
        self.index = index
        self.size = size
        self._entries: OrderedDict[str, tuple[Any, JobPictures]] = OrderedDict()
        self._lock = threading.Lock()

    def job(self, job_id: str) -> JobPictures:
        """The pictures of ``job_id``; ``EntityNotFound`` for an unknown job or when its series holds no
        instance any more, ``EntityConflict`` when the series does not load."""
        job, stored = _job_results(self.settings, self.index, job_id)
        instances = len(self.index.instances_of_series(job["series_instance_uid"]))
        fingerprint = (instances, _fingerprint(stored))  # a series that grew is loaded again
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None and entry[0] == fingerprint:
                self._entries.move_to_end(job_id)
                return entry[1]
            pictures = self._make(job, stored, instances)
            self._entries[job_id] = (fingerprint, pictures)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return pictures

    def _make(self, job: Any, stored: list[tuple[int, Path]], instances: int) -> JobPictures:
        if not instances:
            raise EntityNotFound("series", job["series_instance_uid"])
        try:
            volume = pipeline.load_job_volume(self.index, job)
        except Exception as exc:
            logger.exception("job %s: its series does not load for the console", job["job_id"])
            raise EntityConflict(f"the series of job {job['job_id']} does not load: {exc}") from None
        masks: dict[str, np.ndarray] = {}
        boxes: list[Box] = []
        for number, path in stored:
            try:
                result = ToolResult.load(path)
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("job %s action %d: result unreadable: %s", job["job_id"], number, exc)
                continue
            if result.status is not ToolStatus.OK:
                continue
            if result.masks:
                try:
                    checked = checked_masks(volume, result.masks)
                except EncodeError as exc:
                    logger.warning("job %s action %d: masks not shown: %s", job["job_id"], number, exc)
                    checked = {}
                for label, mask in checked.items():
                    masks[label] = mask | masks[label] if label in masks else mask
            boxes.extend(box for box in result.boxes if 0 <= box.frame < volume.array.shape[0])
        return JobPictures(job_id=job["job_id"], volume=volume, masks=masks, boxes=boxes)


def key_image_png(index: Index, job_id: str, sop_instance_uid: str) -> bytes:
    """The job's Secondary Capture output ``sop_instance_uid`` as PNG; ``EntityNotFound`` when the job has
    no such key image (or its file is gone)."""
    for row in index.outputs(job_id):
        if row["sop_instance_uid"] == sop_instance_uid and row["kind"] == "SC":
            try:
                dataset = pydicom.dcmread(row["path"])
            except OSError:
                break
            pixels = dataset.pixel_array
            if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
                pixels = pixels[0]
            return _png(pixels.astype(np.uint8))
    raise EntityNotFound("key image", sop_instance_uid)
