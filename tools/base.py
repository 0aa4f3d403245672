"""The tool contract (DESIGN.md 3.3): ``Tool.run(ToolInput) -> ToolResult``.

Arrays are indexed ``[frame, row, column]``. Boxes are pixel ``(x0, y0, x1, y1)`` with x along columns,
inclusive of the pixels they cover, on one frame. Masks are boolean volumes aligned with the input image.
Tools never import pynetdicom and never write DICOM.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np


class ToolStatus(str, Enum):
    OK = "ok"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"


class Queue(str, Enum):
    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True)
class Box:
    """A labelled box on one frame, in pixels (``xyxy``) and normalised 0-1 (``xyxy_normalised``)."""

    label: str
    frame: int
    xyxy: tuple[float, float, float, float]
    score: float
    rows: int
    columns: int

    @property
    def xyxy_normalised(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.xyxy
        return (x0 / self.columns, y0 / self.rows, x1 / self.columns, y1 / self.rows)


@dataclass(frozen=True)
class Measurement:
    """A named value with its UCUM unit, for one label (structure)."""

    label: str
    name: str
    value: float
    unit: str


@dataclass
class ToolInput:
    """What a tool gets: pixels, geometry and text; never patient identifiers.

    ``image`` is ``[frame, row, column]`` in real-world values (Hounsfield units for CT).
    ``spacing`` is ``(slice distance, row spacing, column spacing)`` in mm, or None when the source does
    not tell it: a tool then reports no physical measurement rather than guess.
    ``row_direction`` and ``column_direction`` are the patient-space (LPS) directions of increasing
    column and increasing row, so a tool can tell the patient's left from right.
    """

    image: np.ndarray
    spacing: tuple[float, float, float] | None
    modality: str
    row_direction: tuple[float, float, float] = (1.0, 0.0, 0.0)
    column_direction: tuple[float, float, float] = (0.0, 1.0, 0.0)
    body_part: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    instruction: str = ""
    device: str = "cpu"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:N" or "mps"; engines resolve it


@dataclass
class ToolResult:
    """One envelope for every tool's output."""

    status: ToolStatus
    engine: str = ""
    engine_version: str = ""
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: list[Box] = field(default_factory=list)
    labels: dict[str, float] = field(default_factory=dict)
    text: str = ""
    measurements: list[Measurement] = field(default_factory=list)
    sources: list[dict[str, str]] = field(default_factory=list)
    error: str = ""

    @classmethod
    def failed(cls, engine: str, error: str) -> ToolResult:
        return cls(status=ToolStatus.FAILED, engine=engine, error=error)

    def save(self, path: str | Path) -> None:
        """Write the result as ``<path>.json`` plus ``<path>.npz`` for the masks."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = list(self.masks)
        np.savez_compressed(
            path.with_suffix(".npz"), **{f"mask{i}": self.masks[label] for i, label in enumerate(labels)}
        )
        document = {
            "status": self.status.value,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "mask_labels": labels,
            "boxes": [asdict(box) for box in self.boxes],
            "labels": self.labels,
            "text": self.text,
            "measurements": [asdict(m) for m in self.measurements],
            "sources": self.sources,
            "error": self.error,
        }
        temporary = path.with_suffix(".json.part")
        temporary.write_text(json.dumps(document, indent=1))
        temporary.replace(path.with_suffix(".json"))

    @classmethod
    def load(cls, path: str | Path) -> ToolResult:
        path = Path(path)
        document = json.loads(path.with_suffix(".json").read_text())
        masks = {}
        if document["mask_labels"]:
            with np.load(path.with_suffix(".npz")) as arrays:
                masks = {label: arrays[f"mask{i}"] for i, label in enumerate(document["mask_labels"])}
        return cls(
            status=ToolStatus(document["status"]),
            engine=document["engine"],
            engine_version=document["engine_version"],
            masks=masks,
            boxes=[Box(**{**b, "xyxy": tuple(b["xyxy"])}) for b in document["boxes"]],
            labels=document["labels"],
            text=document["text"],
            measurements=[Measurement(**m) for m in document["measurements"]],
            sources=document["sources"],
            error=document["error"],
        )


@dataclass(frozen=True)
class ToolCard:
    """What the planner and admins know about a tool."""

    name: str
    description: str
    tasks: tuple[str, ...]
    modalities: tuple[str, ...]
    parameters: dict[str, Any]
    outputs: tuple[str, ...]
    queue: Queue = Queue.CPU
    aliases: tuple[str, ...] = ()


class Tool:
    """Base class: subclasses set ``card`` and implement ``run``; ``readiness`` says whether it can run."""

    card: ToolCard

    def readiness(self) -> tuple[bool, str]:
        """``(ready, reason)``: whether an engine of this tool can run on this machine, and why not."""
        return True, "ready"

    def run(self, tool_input: ToolInput) -> ToolResult:
        raise NotImplementedError
