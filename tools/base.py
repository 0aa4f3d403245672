"""The tool contract (DESIGN.md 3.3): ``Tool.run(ToolInput) -> ToolResult``.

Arrays are indexed ``[frame, row, column]`` (``[frame, row, column, 3]`` RGB for colour images). Boxes are
pixel ``(x0, y0, x1, y1)`` with x along columns, inclusive of the pixels they cover, on one frame. Masks
are boolean volumes ``[frame, row, column]`` aligned with the input image. Tools never import pynetdicom
and never read or write DICOM.

A tool has one or more engines (``engines()``): pretrained ones whose weights ship in a package,
configured ones whose weights a user points ``models.*`` at, and classical ones, named as such. ``load()``
loads what the tool will run with, once per process (``cached_model``); ``run`` loads on first use too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from config.settings import ModelsSection

_T = TypeVar("_T")
_MODEL_CACHE: dict[tuple[Any, ...], Any] = {}
_MODEL_LOCKS: dict[tuple[Any, ...], threading.Lock] = {}
_CACHE_LOCK = threading.Lock()


def cached_model(key: tuple[Any, ...], factory: Callable[[], _T]) -> _T:
    """``factory()`` once per process for ``key`` (engine name, weights path, device...), then the same object.

    Two threads asking for the same key wait for one load; different keys load in parallel.
    """
    with _CACHE_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]  # type: ignore[no-any-return]
        lock = _MODEL_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _CACHE_LOCK:
            if key in _MODEL_CACHE:
                return _MODEL_CACHE[key]  # type: ignore[no-any-return]
        model = factory()
        with _CACHE_LOCK:
            _MODEL_CACHE[key] = model
        return model


def clear_model_cache() -> None:
    """Forget every cached model (tests that swap weights use it)."""
    with _CACHE_LOCK:
        _MODEL_CACHE.clear()
        _MODEL_LOCKS.clear()


def resolve_device(device: str) -> str:
    """The torch device for a ``models.device`` value: ``auto`` is CUDA when torch sees a GPU, else CPU;
    ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` pass through. The one place engines resolve it."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_models() -> ModelsSection:
    from config.settings import ModelsSection

    return ModelsSection()


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
    #: ``image`` is ``[frame, row, column, 3]`` RGB (uint8) instead of one value per pixel
    is_color: bool = False
    #: grey images only: what a display shows for ``image`` (level, width), from the source's VOI; None
    #: when the source gives none. MONOCHROME1 sources arrive already inverted to MONOCHROME2.
    window: tuple[float, float] | None = None
    #: de-identified DICOM metadata by keyword (Modality, BodyPartExamined, StudyDescription,
    #: SeriesDescription, ImageType, ViewPosition, Laterality, Manufacturer, SliceThickness, ...); never
    #: names, IDs, dates of birth or UIDs
    metadata: dict[str, str] = field(default_factory=dict)
    #: what earlier actions of the same job returned, as ``ToolResult.summary()`` dicts, in plan order
    prior_results: list[dict[str, Any]] = field(default_factory=list)


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

    @classmethod
    def unavailable(cls, engine: str, error: str) -> ToolResult:
        return cls(status=ToolStatus.UNAVAILABLE, engine=engine, error=error)

    def summary(self, tool: str = "") -> dict[str, Any]:
        """What a later tool (a report, an answer) may read of this result: no arrays, only facts.

        Masks become their labels with voxel counts; boxes are counted per label.
        """
        box_counts: dict[str, int] = {}
        for box in self.boxes:
            box_counts[box.label] = box_counts.get(box.label, 0) + 1
        return {
            "tool": tool,
            "status": self.status.value,
            "engine": self.engine,
            "structures": {label: int(np.count_nonzero(mask)) for label, mask in self.masks.items()},
            "boxes": box_counts,
            "labels": dict(self.labels),
            "measurements": [asdict(m) for m in self.measurements],
            "text": self.text,
            "sources": list(self.sources),
            "error": self.error,
        }

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
    #: the result depends only on the series and the action's parameters (not on the instruction or on other
    #: actions' results): a run finished on the same series with the same parameters may be reused
    reusable: bool = False


class EngineKind(str, Enum):
    PRETRAINED = "pretrained"  # weights shipped in an installed package
    CONFIGURED = "configured"  # weights a user points models.* at
    CLASSICAL = "classical"  # no learned weights; named as such in every output


@dataclass(frozen=True)
class EngineStatus:
    """One engine of a tool, whether it can run here, and why (or why not)."""

    name: str
    kind: EngineKind
    ready: bool
    reason: str


class Tool:
    """Base class: subclasses set ``card``, implement ``run`` and, with several engines, ``engines``.

    ``models`` is the config's ``models`` section (device, weight paths); a tool without configurable
    engines may ignore it. ``engines()`` is cheap: it checks files and installed packages, loads nothing.
    ``load()`` loads the weights of the engine ``run`` will use, once per process (``cached_model``).
    """

    card: ToolCard

    def __init__(self, models: ModelsSection | None = None) -> None:
        self.models = models if models is not None else default_models()

    def engines(self) -> list[EngineStatus]:
        """Every engine of this tool, in the order ``run`` prefers them."""
        return [EngineStatus(self.card.name, EngineKind.CLASSICAL, True, "ready")]

    def engines_that_may_run(self) -> set[str]:
        """The names of the ready engines that ``run`` would choose for some input.

        The first ready engine, and those after it as long as every ready engine before them is
        classical: a classical engine declines the inputs it does not know (the CT grounding a
        radiograph) and the next one runs.
        """
        names: set[str] = set()
        for engine in self.engines():
            if not engine.ready:
                continue
            names.add(engine.name)
            if engine.kind is not EngineKind.CLASSICAL:
                break
        return names

    def readiness(self) -> tuple[bool, str]:
        """``(ready, reason)``: the first engine that can run here, or why none can."""
        engines = self.engines()
        for engine in engines:
            if engine.ready:
                return True, f"{engine.name}: {engine.reason}"
        return False, "; ".join(f"{engine.name}: {engine.reason}" for engine in engines) or "no engine"

    def load(self) -> None:
        """Load the weights ``run`` will use (cached per process); nothing for classical engines."""

    def run(self, tool_input: ToolInput) -> ToolResult:
        raise NotImplementedError
