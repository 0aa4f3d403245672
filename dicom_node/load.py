"""Turn a series into a volume with its geometry (DESIGN.md 3.4).

A ``Volume`` is the series' largest consistent stack of images, sorted by position along the slice normal:

``array``
    Grey images: ``float32 [slice, row, column]`` in real-world values, i.e. the stored values through the
    Modality LUT (Rescale Slope and Intercept, a Modality LUT Sequence, or an enhanced object's per-frame
    Pixel Value Transformation), so CT is in Hounsfield units. No VOI LUT (window), no Presentation LUT and
    no Real World Value Mapping is applied: a MONOCHROME1 image keeps its stored polarity (high values are
    shown dark) and says so with ``inverted``. ``display_array()`` is what a viewer shows (windowed, and
    MONOCHROME1 inverted so that high attenuation is bright); it is also what a model trained on pictures
    (a segmentation model, a CLIP model) should get, never the raw ``array`` of an inverted image.
    Colour images (``is_color``): ``uint8 [slice, row, column, 3]`` RGB, with the palette applied
    (PALETTE COLOR), YCbCr converted (YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT) and samples deeper than
    8 bits scaled linearly to 0-255.
``frame_sources`` and ``datasets``
    ``frame_sources[i]`` is where slice ``i`` comes from: ``(dataset, frame_number)``, the frame number
    1-based for an instance of a multi-frame IOD (one that has Number of Frames), ``None`` otherwise.
    ``datasets[i]`` is ``frame_sources[i].dataset``, the instance that holds slice ``i``: for a multi-frame
    source the same ``Dataset`` object appears once per frame it contributes, so ``datasets[i]`` can be used
    as "the source of slice i" everywhere, but a reference to it must name the frame as well.
    ``source_instances`` lists each instance once. The datasets are the caller's, never modified.
``spacing``, ``pixel_spacing``
    ``spacing`` is ``(slice distance, row spacing, column spacing)`` in mm. The slice distance is measured
    between slice positions along the normal (never taken from SliceThickness, which real series get wrong:
    1 mm slices 5 mm apart); only a single cross-sectional slice uses its SliceThickness. ``pixel_spacing``
    is ``(row spacing, column spacing)``: Pixel Measures of an enhanced object, else PixelSpacing, else
    ImagerPixelSpacing (at the detector, not corrected for magnification); zero or missing values are not a
    spacing. Where a value is unknown the field is ``None`` and measurement code must refuse (tools never
    guess spacing): ``spacing is None`` for every image without a slice distance (a projection radiograph, an
    ultrasound, a slide) or without a pixel spacing; ``voxel_volume_ml`` then raises ``ValueError``.
    ``pixel_spacing`` alone is enough for areas and lengths in one image.
Geometry
    ``row_direction`` (increasing column), ``column_direction`` (increasing row) and ``slice_direction``
    (their cross product, the direction of increasing slice index) are unit vectors in the patient
    coordinate system (LPS); ``positions[i]`` is slice ``i``'s Image Position (Patient) and ``origin`` is
    ``positions[0]``. Images without an Image Plane (projection radiographs, ultrasound, secondary capture)
    have no positions; their row and column directions come from Patient Orientation where it is given (a
    direction named by letters, e.g. ``L\\F``) and are ``None`` otherwise.

What ``load_volume`` does about real series, each reported in ``notes`` (and logged with UIDs only):

- mixed series (several sizes, orientations, pixel spacings or series in one set of instances): the largest
  consistent stack is kept and the rest is named as left out;
- several acquisitions at the same positions (echoes, phases, repeats, enhanced stacks): the stack is split by
  the first attribute that separates them (Stack ID, acquisition, temporal position, echo time, b-value,
  image type) and the largest part is kept; ``LoadError`` when nothing separates them;
- gantry tilt (slice positions offset within the image plane, not along the normal): detected and reported
  with its angle in ``tilt_degrees``; the slices are not resampled, ``spacing[0]`` is the distance between
  slice planes (so voxel volumes are right) and ``positions`` holds the sheared geometry;
- SliceThickness differing from the slice distance, uneven slice distances, different Frame of Reference UIDs
  over one geometry, unusable pixel spacings;
- whole-slide microscopy (VL Whole Slide Microscopy, TILED_FULL or TILED_SPARSE): the largest pyramid level
  no larger than ``MAX_SLIDE_SIDE`` pixels on a side is assembled from its tiles into one RGB image; slides
  with several optical paths or focal planes, and slides whose every level is larger, raise ``LoadError``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder

from dicom_node.errors import LoadError

__all__ = ["MAX_SLIDE_SIDE", "FrameSource", "Volume", "load_volume", "read_series"]

logger = logging.getLogger(__name__)

MAX_SLIDE_SIDE = 2048
"""The largest side (pixels) of a whole-slide pyramid level that ``load_volume`` assembles."""

_WHOLE_SLIDE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_ORIENTATION_TOLERANCE = 1e-3
_POSITION_TOLERANCE_MM = 0.01
_PATIENT_ORIENTATION_AXES = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}
# Attributes that tell acquisitions at the same positions apart, in the order they are tried.
_ACQUISITION_ATTRIBUTES = (
    "StackID",
    "AcquisitionNumber",
    "TemporalPosition",
    "EchoTime",
    "DiffusionBValue",
    "ImageType",
)
_DISPLAY_PERCENTILES = (0.5, 99.5)


class FrameSource(NamedTuple):
    """Where one slice of a volume comes from: an instance and, for a multi-frame IOD, its 1-based frame."""

    dataset: Dataset
    frame_number: int | None


@dataclass
class Volume:
    """Pixel data of one series plus what tools, measurement and encoding code need.

    The module docstring says what ``array``, ``frame_sources``, ``datasets``, ``spacing``,
    ``pixel_spacing`` and the geometry hold. Besides:

    - ``modality``: the source's Modality; ``notes``: what loading found and did, for logs and reports;
    - ``pixel_spacing_source``: the attribute the pixel spacing came from (``PixelMeasuresSequence``,
      ``PixelSpacing``, ``ImagerPixelSpacing``; empty when there is none);
    - ``is_color``: ``array`` is RGB ``uint8 [..., 3]``; ``photometric_interpretation``: the source's, before
      any conversion (``MONOCHROME1``, ``PALETTE COLOR``, ``YBR_FULL_422`` ...);
    - ``inverted``: high values are shown dark (MONOCHROME1, or Presentation LUT Shape INVERSE);
      ``display_array()`` undoes it, ``array`` does not;
    - ``window``: ``(center, width)`` in the units of ``array``: the first slice's Window Center/Width (or
      its Frame VOI LUT), else the input range of its VOI LUT Sequence, else computed from the values
      (said in ``notes``); ``None`` for colour; ``voi_lut_function``: LINEAR, LINEAR_EXACT or SIGMOID;
    - ``frame_of_reference_uid``: the first slice's (see ``notes`` when slices disagree);
    - ``tilt_degrees``: the gantry tilt found in the slice positions, 0.0 when there is none.
    """

    array: np.ndarray
    datasets: list[Dataset]
    spacing: tuple[float, float, float] | None
    origin: np.ndarray | None
    row_direction: np.ndarray | None
    column_direction: np.ndarray | None
    slice_direction: np.ndarray | None
    modality: str
    notes: list[str] = field(default_factory=list)
    frame_sources: list[FrameSource] = field(default_factory=list)
    positions: np.ndarray | None = None
    pixel_spacing: tuple[float, float] | None = None
    pixel_spacing_source: str = ""
    is_color: bool = False
    photometric_interpretation: str = "MONOCHROME2"
    inverted: bool = False
    window: tuple[float, float] | None = None
    voi_lut_function: str = "LINEAR"
    frame_of_reference_uid: str | None = None
    tilt_degrees: float = 0.0

    def __post_init__(self) -> None:
        shape = self.array.shape
        if self.is_color and (self.array.ndim != 4 or shape[-1] != 3):
            raise ValueError(f"Invalid 'array' shape {shape} - a colour volume is [slice, row, column, 3]")
        if not self.is_color and self.array.ndim != 3:
            raise ValueError(f"Invalid 'array' shape {shape} - a grey volume is [slice, row, column]")
        if not self.frame_sources:
            self.frame_sources = [FrameSource(dataset, None) for dataset in self.datasets]
        if len(self.frame_sources) != shape[0]:
            raise ValueError(
                f"Invalid 'frame_sources' length {len(self.frame_sources)} - must be one per slice ({shape[0]})"
            )
        if self.positions is not None and self.positions.shape != (shape[0], 3):
            raise ValueError(
                f"Invalid 'positions' shape {self.positions.shape} - must be ({shape[0]}, 3), one per slice"
            )

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in ml; ``ValueError`` when the slice distance or pixel spacing is unknown."""
        if self.spacing is None:
            raise ValueError(
                f"Invalid volume of series {self.series_instance_uid} - its slice distance or pixel spacing "
                "is unknown, so volumes cannot be measured"
            )
        slice_distance, row_spacing, column_spacing = self.spacing
        return slice_distance * row_spacing * column_spacing / 1000.0

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def source_instances(self) -> list[Dataset]:
        """Each source instance once, in slice order (a multi-frame instance appears once)."""
        unique: dict[int, Dataset] = {}
        for source in self.frame_sources:
            unique.setdefault(id(source.dataset), source.dataset)
        return list(unique.values())

    def patient_position_of(self, slice_index: int, row: float, column: float) -> np.ndarray:
        """Patient coordinates (mm, LPS) of a pixel centre; exact for tilted (sheared) stacks too.

        ``ValueError`` for images without plane geometry or pixel spacing.
        """
        if self.positions is None or self.pixel_spacing is None:
            raise ValueError(
                f"Invalid volume of series {self.series_instance_uid} - it has no plane geometry or pixel "
                "spacing, so pixels have no patient coordinates"
            )
        assert self.row_direction is not None and self.column_direction is not None
        row_spacing, column_spacing = self.pixel_spacing
        return (
            self.positions[slice_index]
            + self.row_direction * column * column_spacing
            + self.column_direction * row * row_spacing
        )

    def display_array(self, window: tuple[float, float] | None = None) -> np.ndarray:
        """``float32`` in 0-1 as a viewer shows it: ``[slice, row, column]`` grey or ``[..., 3]`` RGB.

        Grey images go through ``window`` ``(center, width)`` in real-world units (default: the source's
        window, with its VOI LUT Function; a source VOI LUT Sequence is applied as such), then MONOCHROME1 is
        inverted so that 1 is bright. Colour images are scaled from 0-255.
        """
        if self.is_color:
            return self.array.astype(np.float32) / 255.0
        first = self.frame_sources[0]
        if window is None and first.frame_number is None and "VOILUTSequence" in first.dataset:
            shown = np.stack(
                [
                    _apply_voi_lut_sequence(self.array[i], source.dataset)
                    for i, source in enumerate(self.frame_sources)
                ]
            )
        else:
            center, width = window or self.window or _percentile_window(self.array)
            function = self.voi_lut_function if window is None else "LINEAR"
            shown = _apply_window(self.array, center, width, function)
        return (1.0 - shown if self.inverted else shown).astype(np.float32)

    def highdicom_volume(self) -> hd.Volume:
        """This volume as a ``highdicom.Volume`` (array plus affine in the patient frame of reference).

        ``ValueError`` where no orthogonal affine describes the stack: no plane geometry or spacing, uneven
        slice distances, or a gantry tilt (a sheared grid, which highdicom does not represent).
        """
        if self.positions is None or self.spacing is None or self.pixel_spacing is None:
            raise ValueError(
                f"Invalid volume of series {self.series_instance_uid} - without plane geometry and spacing "
                "there is no affine"
            )
        if self.tilt_degrees:
            raise ValueError(
                f"Invalid volume of series {self.series_instance_uid} - its gantry tilt of "
                f"{self.tilt_degrees:.1f} degrees makes a sheared grid; highdicom volumes are orthogonal"
            )
        assert self.row_direction is not None and self.column_direction is not None
        assert self.slice_direction is not None
        if len(self.positions) > 1:
            step = (self.positions[-1] - self.positions[0]) / (len(self.positions) - 1)
            if not np.allclose(np.diff(self.positions, axis=0), step, atol=_POSITION_TOLERANCE_MM * 10):
                raise ValueError(
                    f"Invalid volume of series {self.series_instance_uid} - its slices are unevenly spaced, "
                    "so no affine describes them"
                )
        else:
            step = self.slice_direction * self.spacing[0]
        affine = np.eye(4)
        affine[:3, 0] = step
        affine[:3, 1] = self.column_direction * self.pixel_spacing[0]
        affine[:3, 2] = self.row_direction * self.pixel_spacing[1]
        affine[:3, 3] = self.positions[0]
        channels = {hd.RGB_COLOR_CHANNEL_DESCRIPTOR: ["R", "G", "B"]} if self.is_color else None
        return hd.Volume(
            self.array,
            affine,
            coordinate_system="PATIENT",
            frame_of_reference_uid=self.frame_of_reference_uid,
            channels=channels,
        )


def read_series(paths: Sequence[str | Path]) -> list[Dataset]:
    """Read every file of a series; ``LoadError`` naming the first file that is not DICOM."""
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as exc:
            raise LoadError(f"cannot read {Path(path).name}: {exc}") from exc
    if not datasets:
        raise LoadError("the series holds no instances")
    return datasets


def load_volume(datasets: Sequence[Dataset]) -> Volume:
    """The largest consistent stack of ``datasets``, sorted and decoded; ``LoadError`` with the reason.

    Single-frame and multi-frame (enhanced, legacy converted enhanced, legacy multi-frame) instances may be
    mixed; every frame is placed by its own geometry. See the module docstring for what is reported.
    """
    images = [d for d in datasets if any(keyword in d for keyword in _PIXEL_DATA_KEYWORDS)]
    if not images:
        raise LoadError("no instance of the series carries pixel data")
    notes: list[str] = []
    if len(images) < len(datasets):
        notes.append(f"{len(datasets) - len(images)} instance(s) without pixel data left out")
    if any(_is_tiled(d) for d in images):
        volume = _load_whole_slide(images, notes)
    else:
        volume = _load_stack(images, notes)
    for note in volume.notes:
        logger.info("series %s: %s", volume.series_instance_uid, note)
    return volume


# --- frames and their attributes -------------------------------------------------------------------------


@dataclass
class _Frame:
    source: FrameSource
    rows: int
    columns: int
    samples: int
    orientation: np.ndarray | None
    position: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    pixel_spacing_source: str
    spacing_problems: tuple[str, ...]
    slice_thickness: float | None
    order: tuple[float, str, int]
    acquisition: dict[str, str]

    @property
    def index(self) -> int:
        """0-based index of the frame in its instance."""
        return (self.source.frame_number or 1) - 1

    @property
    def placed(self) -> bool:
        return self.orientation is not None and self.position is not None


class _FunctionalGroups:
    """An enhanced object's functional groups for one frame: the per-frame item first, then the shared one."""

    def __init__(self, dataset: Dataset, index: int) -> None:
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
        shared = dataset.get("SharedFunctionalGroupsSequence") or []
        self.items: list[Dataset] = []
        if index < len(per_frame):
            self.items.append(per_frame[index])
        self.items.extend(shared[:1])

    def item(self, sequence_keyword: str) -> Dataset | None:
        for group in self.items:
            sequence = group.get(sequence_keyword)
            if sequence:
                return sequence[0]
        return None

    def value(self, sequence_keyword: str, keyword: str) -> Any:
        item = self.item(sequence_keyword)
        return None if item is None else item.get(keyword)

    def frame_type(self) -> Any:
        for group in self.items:
            for element in group:
                if element.keyword.endswith("FrameTypeSequence") and element.value:
                    return element.value[0].get("FrameType")
        return None


def _floats(value: Any, count: int) -> np.ndarray | None:
    """``value`` as ``count`` finite floats, or ``None``."""
    if value is None or value == "":
        return None
    values = value if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str) else [value]
    try:
        numbers = np.asarray([float(v) for v in values])
    except (TypeError, ValueError):
        return None
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        return None
    return numbers


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "\\".join(str(v) for v in value)
    return str(value)


def _pixel_spacing_of(
    dataset: Dataset, groups: _FunctionalGroups
) -> tuple[tuple[float, float] | None, str, tuple[str, ...]]:
    """``(spacing, attribute it came from, problems with the attributes that were not usable)``."""
    problems = []
    for source, value in (
        ("PixelMeasuresSequence", groups.value("PixelMeasuresSequence", "PixelSpacing")),
        ("PixelSpacing", dataset.get("PixelSpacing")),
        ("ImagerPixelSpacing", dataset.get("ImagerPixelSpacing")),
    ):
        if value is None or value == "":
            continue
        numbers = _floats(value, 2)
        if numbers is None or np.any(numbers <= 0):
            problems.append(f"{source} {_text(value)} is not a spacing and is ignored")
            continue
        return (float(numbers[0]), float(numbers[1])), source, tuple(problems)
    return None, "", tuple(problems)


def _frames_of(dataset: Dataset) -> list[_Frame]:
    multi_frame = "NumberOfFrames" in dataset
    count = int(dataset.get("NumberOfFrames") or 1) if multi_frame else 1
    sop_instance_uid = str(dataset.get("SOPInstanceUID", ""))
    try:
        instance_number = float(dataset.get("InstanceNumber"))
    except (TypeError, ValueError):
        instance_number = math.inf
    top_orientation = _floats(dataset.get("ImageOrientationPatient"), 6)
    top_position = _floats(dataset.get("ImagePositionPatient"), 3)
    grid_offsets = _floats(dataset.get("GridFrameOffsetVector"), count) if count > 1 else None
    frames = []
    for index in range(count):
        groups = _FunctionalGroups(dataset, index)
        orientation = _floats(groups.value("PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        if orientation is None:
            orientation = top_orientation
        position = _floats(groups.value("PlanePositionSequence", "ImagePositionPatient"), 3)
        if position is None and top_position is not None:
            if count == 1:
                position = top_position
            elif grid_offsets is not None and orientation is not None:
                position = top_position + grid_offsets[index] * np.cross(orientation[:3], orientation[3:])
        pixel_spacing, pixel_spacing_source, problems = _pixel_spacing_of(dataset, groups)
        thickness = _floats(groups.value("PixelMeasuresSequence", "SliceThickness"), 1)
        if thickness is None:
            thickness = _floats(dataset.get("SliceThickness"), 1)
        content = groups.item("FrameContentSequence") or Dataset()
        acquisition = {
            "StackID": _text(content.get("StackID")),
            "AcquisitionNumber": _text(
                content.get("FrameAcquisitionNumber", dataset.get("AcquisitionNumber"))
            ),
            "TemporalPosition": _text(
                content.get("TemporalPositionIndex", dataset.get("TemporalPositionIdentifier"))
            ),
            "EchoTime": _text(groups.value("MREchoSequence", "EffectiveEchoTime") or dataset.get("EchoTime")),
            "DiffusionBValue": _text(
                groups.value("MRDiffusionSequence", "DiffusionBValue") or dataset.get("DiffusionBValue")
            ),
            "ImageType": _text(groups.frame_type() or dataset.get("ImageType")),
        }
        frames.append(
            _Frame(
                source=FrameSource(dataset, index + 1 if multi_frame else None),
                rows=int(dataset.Rows),
                columns=int(dataset.Columns),
                samples=int(dataset.get("SamplesPerPixel", 1) or 1),
                orientation=orientation,
                position=position,
                pixel_spacing=pixel_spacing,
                pixel_spacing_source=pixel_spacing_source,
                spacing_problems=problems,
                slice_thickness=float(thickness[0]) if thickness is not None and thickness[0] > 0 else None,
                order=(instance_number, sop_instance_uid, index),
                acquisition=acquisition,
            )
        )
    return frames


# --- choosing the stack --------------------------------------------------------------------------------------


def _stack_key(frame: _Frame) -> tuple[Any, ...]:
    spacing = None if frame.pixel_spacing is None else tuple(round(v, 4) for v in frame.pixel_spacing)
    series = str(frame.source.dataset.get("SeriesInstanceUID", ""))
    return (series, frame.rows, frame.columns, frame.samples, frame.placed, spacing)


def _describe(frames: list[_Frame]) -> str:
    first = frames[0]
    text = f"{len(frames)} image(s) of {first.rows}x{first.columns}"
    if first.samples > 1:
        text += f" x{first.samples} samples"
    if first.placed:
        assert first.orientation is not None
        text += " oriented (" + ", ".join(f"{v:.3g}" for v in first.orientation) + ")"
    else:
        text += " without plane geometry"
    if first.pixel_spacing is not None:
        text += f", pixel spacing {first.pixel_spacing[0]:g}x{first.pixel_spacing[1]:g} mm"
    return text


def _instance_list(frames: list[_Frame], limit: int = 3) -> str:
    uids = list(dict.fromkeys(str(f.source.dataset.get("SOPInstanceUID", "?")) for f in frames))
    more = f" and {len(uids) - limit} more" if len(uids) > limit else ""
    return ", ".join(uids[:limit]) + more


def _largest_consistent_stack(frames: list[_Frame], notes: list[str]) -> list[_Frame]:
    """The frames that share size, samples, series, pixel spacing and orientation; the largest such group."""
    groups: list[list[_Frame]] = []
    for frame in frames:
        for group in groups:
            reference = group[0]
            if _stack_key(reference) != _stack_key(frame):
                continue
            if frame.placed and not np.allclose(
                reference.orientation,
                frame.orientation,
                atol=_ORIENTATION_TOLERANCE,  # type: ignore[arg-type]
            ):
                continue
            group.append(frame)
            break
        else:
            groups.append([frame])
    if len(groups) == 1:
        return groups[0]
    kept = max(groups, key=len)
    left_out = [g for g in groups if g is not kept]
    notes.append(
        f"the series mixes {len(groups)} kinds of images; kept the largest consistent stack ({_describe(kept)}); "
        + "; ".join(f"left out {_describe(g)} (instances {_instance_list(g)})" for g in left_out)
    )
    return kept


def _normal_of(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row = orientation[:3] / np.linalg.norm(orientation[:3])
    column = orientation[3:] / np.linalg.norm(orientation[3:])
    normal = np.cross(row, column)
    return row, column, normal / np.linalg.norm(normal)


def _has_shared_positions(frames: list[_Frame], normal: np.ndarray) -> bool:
    distances = np.sort([float(np.dot(f.position, normal)) for f in frames])  # type: ignore[arg-type]
    return bool(np.any(np.diff(distances) < _POSITION_TOLERANCE_MM))


def _one_acquisition(frames: list[_Frame], normal: np.ndarray, notes: list[str]) -> list[_Frame]:
    """``frames`` if no two share a position; else the largest part of the first attribute that separates them."""
    if not _has_shared_positions(frames, normal):
        return frames
    for attribute in _ACQUISITION_ATTRIBUTES:
        parts: dict[str, list[_Frame]] = {}
        for frame in frames:
            parts.setdefault(frame.acquisition[attribute], []).append(frame)
        if len(parts) < 2 or any(_has_shared_positions(part, normal) for part in parts.values()):
            continue
        value, kept = max(sorted(parts.items()), key=lambda item: len(item[1]))
        others = ", ".join(f"{v or '(none)'}: {len(p)}" for v, p in sorted(parts.items()) if v != value)
        notes.append(
            f"the stack holds {len(parts)} acquisitions at the same positions, told apart by {attribute}; kept "
            f"{attribute} {value or '(none)'} ({len(kept)} images), left out {others}"
        )
        return kept
    distances = np.round([float(np.dot(f.position, normal)) for f in frames], 2)  # type: ignore[arg-type]
    values, counts = np.unique(distances, return_counts=True)
    raise LoadError(
        f"images of the series share slice positions ({int(np.sum(counts > 1))} of {len(values)} positions "
        f"hold more than one image) and no attribute ({', '.join(_ACQUISITION_ATTRIBUTES)}) tells them apart"
    )


# --- a stack of slices or images ---------------------------------------------------------------------------


def _load_stack(images: list[Dataset], notes: list[str]) -> Volume:
    frames = sorted((f for d in images for f in _frames_of(d)), key=lambda f: f.order)
    frames = _largest_consistent_stack(frames, notes)
    first = frames[0]
    row_direction = column_direction = slice_direction = None
    positions = None
    slice_distance: float | None = None
    tilt_degrees = 0.0
    if first.placed:
        assert first.orientation is not None
        row_direction, column_direction, slice_direction = _normal_of(first.orientation)
        frames = _one_acquisition(frames, slice_direction, notes)
        distances = np.array([float(np.dot(f.position, slice_direction)) for f in frames])  # type: ignore[arg-type]
        order = np.argsort(distances, kind="stable")
        frames = [frames[i] for i in order]
        positions = np.array([f.position for f in frames], dtype=float)
        slice_distance, tilt_degrees = _slice_distance(
            frames, positions, distances[order], slice_direction, notes
        )
    else:
        row_direction, column_direction, slice_direction = _directions_from_patient_orientation(first, notes)
        notes.append(
            ("the images have" if len(frames) > 1 else "the image has")
            + " no plane geometry (Image Orientation/Position (Patient)): no positions, no slice distance"
            + ("; kept in Instance Number and frame order, not a volume" if len(frames) > 1 else "")
        )
    first = frames[0]
    pixel_spacing = first.pixel_spacing
    notes.extend(sorted({problem for f in frames for problem in f.spacing_problems}))
    if pixel_spacing is None:
        notes.append(_no_spacing_note(first.source.dataset))
    elif not first.placed or first.pixel_spacing_source == "ImagerPixelSpacing":
        notes.append(_spacing_note(first))
    frames_of_reference = {str(f.source.dataset.get("FrameOfReferenceUID", "")) for f in frames}
    if len(frames_of_reference) > 1:
        notes.append(
            f"the series' {len(frames)} slices carry {len(frames_of_reference)} different FrameOfReferenceUIDs "
            "with one consistent geometry; results use the first slice's frame of reference"
        )
    array, is_color = _decode(frames)
    dataset = first.source.dataset
    window, voi_lut_function = (None, "LINEAR") if is_color else _window_of(frames, array, notes)
    frame_of_reference_uid = dataset.get("FrameOfReferenceUID")
    return Volume(
        array=array,
        datasets=[f.source.dataset for f in frames],
        spacing=(
            (slice_distance, *pixel_spacing)
            if slice_distance is not None and pixel_spacing is not None
            else None
        ),
        origin=None if positions is None else positions[0].copy(),
        row_direction=row_direction,
        column_direction=column_direction,
        slice_direction=slice_direction,
        modality=str(dataset.get("Modality", "")),
        notes=notes,
        frame_sources=[f.source for f in frames],
        positions=positions,
        pixel_spacing=pixel_spacing,
        pixel_spacing_source=first.pixel_spacing_source,
        is_color=is_color,
        photometric_interpretation=str(dataset.get("PhotometricInterpretation", "")),
        inverted=_is_inverted(dataset),
        window=window,
        voi_lut_function=voi_lut_function,
        frame_of_reference_uid=str(frame_of_reference_uid) if frame_of_reference_uid else None,
        tilt_degrees=tilt_degrees,
    )


def _slice_distance(
    frames: list[_Frame], positions: np.ndarray, distances: np.ndarray, normal: np.ndarray, notes: list[str]
) -> tuple[float | None, float]:
    """``(slice distance along the normal, gantry tilt in degrees)`` of a sorted stack, with notes."""
    thickness = frames[0].slice_thickness
    if len(frames) == 1:
        if thickness is None:
            notes.append(
                "a single slice without SliceThickness: no slice distance, volumes cannot be measured"
            )
            return None, 0.0
        notes.append(f"a single slice: its SliceThickness {thickness:g} mm is used as the slice distance")
        return thickness, 0.0
    steps = np.diff(distances)
    slice_distance = float(np.median(steps))
    if np.max(np.abs(steps - slice_distance)) > 0.01 * slice_distance + 1e-3:
        gaps = int(np.sum(steps > 1.5 * slice_distance))
        notes.append(
            f"slice distance varies from {steps.min():.3f} to {steps.max():.3f} mm; using the median "
            f"{slice_distance:.3f} mm"
            + (f"; {gaps} gap(s) wider than 1.5 slice distances (slices may be missing)" if gaps else "")
        )
    if thickness is not None and abs(thickness - slice_distance) > 0.01:
        notes.append(
            f"SliceThickness is {thickness:g} mm but slices are {slice_distance:g} mm apart; "
            "volumes use the distance between slice positions"
        )
    offsets = np.diff(positions, axis=0)
    in_plane = offsets - np.outer(offsets @ normal, normal)
    shift = float(np.median(np.linalg.norm(in_plane, axis=1)))
    header_tilt = _floats(frames[0].source.dataset.get("GantryDetectorTilt"), 1)
    if shift > _POSITION_TOLERANCE_MM:
        tilt_degrees = math.degrees(math.atan2(shift, slice_distance))
        notes.append(
            f"gantry tilt: each slice is offset {shift:.3f} mm within the image plane for {slice_distance:g} mm "
            f"along its normal (about {tilt_degrees:.1f} degrees"
            + (f"; GantryDetectorTilt says {header_tilt[0]:g}" if header_tilt is not None else "")
            + "); slices are kept as acquired, not resampled: the slice distance is measured between the slice "
            "planes, so voxel volumes are right, but the grid is sheared: use the slice positions for coordinates"
        )
        return slice_distance, tilt_degrees
    if header_tilt is not None and abs(header_tilt[0]) > 0.01:
        notes.append(
            f"GantryDetectorTilt is {header_tilt[0]:g} degrees but the slice positions lie along the normal "
            "(the images are already corrected)"
        )
    return slice_distance, 0.0


def _directions_from_patient_orientation(
    frame: _Frame, notes: list[str]
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Row and column directions named by Patient Orientation letters (e.g. ``L\\F``), if given."""
    value = frame.source.dataset.get("PatientOrientation")
    letters = [str(v).upper() for v in value] if value and not isinstance(value, str) else []
    if (
        len(letters) != 2
        or not all(letters)
        or any(c not in _PATIENT_ORIENTATION_AXES for c in "".join(letters))
    ):
        return None, None, None
    row, column = (
        np.sum([_PATIENT_ORIENTATION_AXES[c] for c in text], axis=0, dtype=float) for text in letters
    )
    if np.linalg.norm(row) == 0 or np.linalg.norm(column) == 0:
        return None, None, None
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    normal = np.cross(row, column)
    notes.append(
        f"row and column directions from Patient Orientation {letters[0]}\\{letters[1]} (named directions, "
        "not a measured geometry)"
    )
    return row, column, (normal / np.linalg.norm(normal) if np.linalg.norm(normal) else None)


def _spacing_note(frame: _Frame) -> str:
    assert frame.pixel_spacing is not None
    text = f"pixel spacing {frame.pixel_spacing[0]:g}x{frame.pixel_spacing[1]:g} mm from {frame.pixel_spacing_source}"
    if frame.pixel_spacing_source == "ImagerPixelSpacing":
        text += " (at the detector plane, not corrected for geometric magnification)"
        factor = frame.source.dataset.get("EstimatedRadiographicMagnificationFactor")
        if factor:
            text += f"; EstimatedRadiographicMagnificationFactor is {float(factor):g}"
    return text


def _no_spacing_note(dataset: Dataset) -> str:
    text = (
        "no pixel spacing (PixelSpacing, ImagerPixelSpacing or Pixel Measures): measurements are impossible"
    )
    regions = dataset.get("SequenceOfUltrasoundRegions") or []
    if regions:
        text += (
            f"; the ultrasound calibration is per region ({len(regions)} region(s) in "
            "SequenceOfUltrasoundRegions), not image-wide"
        )
    return text


# --- pixels ----------------------------------------------------------------------------------------------------


def _decode(frames: list[_Frame]) -> tuple[np.ndarray, bool]:
    """The frames' pixels: ``float32`` real-world grey values or ``uint8`` RGB; ``(array, is_color)``."""
    by_instance: dict[int, list[int]] = {}
    for position, frame in enumerate(frames):
        by_instance.setdefault(id(frame.source.dataset), []).append(position)
    slices: list[np.ndarray | None] = [None] * len(frames)
    for positions in by_instance.values():
        dataset = frames[positions[0]].source.dataset
        indices = [frames[p].index for p in positions]
        pixels = _pixels_of(dataset, indices)
        for position, pixel_slice in zip(positions, pixels, strict=True):
            slices[position] = pixel_slice
    array = np.stack(slices)  # type: ignore[arg-type]
    return array, array.ndim == 4


def _stored_frames(dataset: Dataset, indices: list[int]) -> np.ndarray:
    """Stored values of the frames at 0-based ``indices`` (colour as RGB), ``[frame, row, column(, 3)]``."""
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = (file_meta.get("TransferSyntaxUID") if file_meta is not None else None) or (
        pydicom.uid.ExplicitVRLittleEndian
    )
    count = int(dataset.get("NumberOfFrames") or 1)
    try:
        decoder = get_decoder(transfer_syntax)
        if count > 1 and len(indices) <= count // 2:
            return np.stack([decoder.as_array(dataset, index=i, as_rgb=True)[0] for i in indices])
        stored, _ = decoder.as_array(dataset, as_rgb=True)
        return (stored if count > 1 else stored[None])[indices]
    except Exception as exc:
        name = getattr(transfer_syntax, "name", str(transfer_syntax))
        raise LoadError(
            f"pixel data of instance {dataset.get('SOPInstanceUID', '?')} ({name}) does not decode: {exc}"
        ) from exc


def _pixels_of(dataset: Dataset, indices: list[int]) -> np.ndarray:
    stored = _stored_frames(dataset, indices)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(stored, dataset)
        except Exception as exc:
            raise LoadError(
                f"the palette of instance {dataset.get('SOPInstanceUID', '?')} cannot be applied: {exc}"
            ) from exc
        bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
        return _to_uint8(rgb, bits)
    if stored.ndim == 4:
        return _to_uint8(stored, int(dataset.get("BitsStored", 8)))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise LoadError(f"Photometric Interpretation '{photometric}' is not supported")
    return _modality_values(dataset, stored, indices)


def _to_uint8(rgb: np.ndarray, bits: int) -> np.ndarray:
    if bits <= 8:
        return rgb.astype(np.uint8)
    return np.round(rgb.astype(np.float64) * (255.0 / (2**bits - 1))).astype(np.uint8)


def _modality_values(dataset: Dataset, stored: np.ndarray, indices: list[int]) -> np.ndarray:
    """The Modality LUT applied: per-frame Pixel Value Transformation for enhanced objects, else the top level."""
    transforms = [_FunctionalGroups(dataset, i).item("PixelValueTransformationSequence") for i in indices]
    if any(t is not None for t in transforms):
        values = np.empty(stored.shape, dtype=np.float32)
        for k, transform in enumerate(transforms):
            slope = float(transform.get("RescaleSlope", 1) if transform else 1)
            intercept = float(transform.get("RescaleIntercept", 0) if transform else 0)
            values[k] = stored[k].astype(np.float64) * slope + intercept
        return values
    return np.asarray(apply_modality_lut(stored, dataset), dtype=np.float32)


def _is_inverted(dataset: Dataset) -> bool:
    """Whether high values show dark: MONOCHROME1 (unless its Presentation LUT says IDENTITY) or INVERSE."""
    shape = str(dataset.get("PresentationLUTShape", "")).upper()
    if shape == "INVERSE":
        return True
    return str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1" and shape != "IDENTITY"


# --- VOI (window) ----------------------------------------------------------------------------------------------


def _window_of(frames: list[_Frame], array: np.ndarray, notes: list[str]) -> tuple[tuple[float, float], str]:
    """``((center, width), VOI LUT Function)`` of the first slice that has a window; else computed."""
    for frame in frames:
        dataset = frame.source.dataset
        item = _FunctionalGroups(dataset, frame.index).item("FrameVOILUTSequence")
        for holder in (item, dataset):
            if holder is None:
                continue
            center = _first_float(holder.get("WindowCenter"))
            width = _first_float(holder.get("WindowWidth"))
            if center is not None and width is not None and width > 0:
                return (center, width), str(holder.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        lut = (dataset.get("VOILUTSequence") or [None])[0]
        if lut is not None and "LUTDescriptor" in lut:
            entries, first_mapped = int(lut.LUTDescriptor[0]) or 65536, float(lut.LUTDescriptor[1])
            return (first_mapped + entries / 2.0, float(entries)), "LINEAR"
    window = _percentile_window(array)
    notes.append(
        f"the source gives no window; window {window[0]:g}/{window[1]:g} computed from the "
        f"{_DISPLAY_PERCENTILES[0]}-{_DISPLAY_PERCENTILES[1]} percentiles of the values"
    )
    return window, "LINEAR"


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _percentile_window(array: np.ndarray) -> tuple[float, float]:
    sample = array.reshape(-1)[:: max(1, array.size // 1_000_000)]
    low, high = (float(v) for v in np.percentile(sample, _DISPLAY_PERCENTILES))
    return (low + high) / 2.0, max(high - low, 1.0)


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing to 0-1: LINEAR, LINEAR_EXACT or SIGMOID."""
    values = values.astype(np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _apply_voi_lut_sequence(values: np.ndarray, dataset: Dataset) -> np.ndarray:
    lut = dataset.VOILUTSequence[0]
    bits = int(lut.LUTDescriptor[2])
    indices = np.rint(values).astype(np.int64)  # a LUT is indexed by whole values
    return apply_voi(indices, dataset, index=0).astype(np.float64) / (2**bits - 1)


# --- whole-slide microscopy ------------------------------------------------------------------------------------


def _is_tiled(dataset: Dataset) -> bool:
    return str(dataset.get("SOPClassUID", "")) == _WHOLE_SLIDE_SOP_CLASS or (
        "TotalPixelMatrixRows" in dataset
        and str(dataset.get("DimensionOrganizationType", "")) in ("TILED_FULL", "TILED_SPARSE")
    )


def _total_matrix(dataset: Dataset) -> tuple[int, int]:
    return int(dataset.get("TotalPixelMatrixRows", dataset.Rows)), int(
        dataset.get("TotalPixelMatrixColumns", dataset.Columns)
    )


def _load_whole_slide(images: list[Dataset], notes: list[str]) -> Volume:
    """The largest pyramid level no larger than ``MAX_SLIDE_SIDE``, assembled from its tiles."""
    tiled = [d for d in images if _is_tiled(d)]
    if len(tiled) < len(images):
        notes.append(f"{len(images) - len(tiled)} instance(s) that are not whole-slide tiles left out")
    image_types = {id(d): [str(v).upper() for v in (d.get("ImageType") or [])] for d in tiled}
    levels = [d for d in tiled if "VOLUME" in image_types[id(d)][2:3]] or [
        d for d in tiled if "THUMBNAIL" in image_types[id(d)][2:3]
    ]
    if not levels:
        raise LoadError("the whole-slide series has no VOLUME or THUMBNAIL image (only labels or overviews)")
    fitting = [d for d in levels if max(_total_matrix(d)) <= MAX_SLIDE_SIDE]
    if not fitting:
        rows, columns = min((_total_matrix(d) for d in levels), key=lambda size: size[0] * size[1])
        raise LoadError(
            f"whole-slide image: every level is larger than {MAX_SLIDE_SIDE} px on a side (the smallest is "
            f"{rows}x{columns}); loading a level this large is not supported"
        )
    level = max(fitting, key=lambda d: _total_matrix(d)[0] * _total_matrix(d)[1])
    optical_paths = int(level.get("NumberOfOpticalPaths", 1) or 1)
    focal_planes = int(level.get("TotalPixelMatrixFocalPlanes", 1) or 1)
    if optical_paths > 1 or focal_planes > 1:
        raise LoadError(
            f"whole-slide image with {optical_paths} optical paths and {focal_planes} focal planes: only one "
            "optical path and one focal plane are supported"
        )
    rows, columns = _total_matrix(level)
    count = int(level.get("NumberOfFrames") or 1)
    tiles = _pixels_of(level, list(range(count)))
    matrix = np.full((rows, columns, *tiles.shape[3:]), 255 if tiles.dtype == np.uint8 else 0, tiles.dtype)
    for index, (top, left) in enumerate(_tile_origins(level, count)):
        height, width = min(int(level.Rows), rows - top), min(int(level.Columns), columns - left)
        if height > 0 and width > 0:
            matrix[top : top + height, left : left + width] = tiles[index, :height, :width]
    groups = _FunctionalGroups(level, 0)
    pixel_spacing, pixel_spacing_source, problems = _pixel_spacing_of(level, groups)
    notes.extend(problems)
    notes.append(
        f"whole-slide image: level {rows}x{columns} assembled from {count} tile(s), the largest of "
        f"{len(levels)} level(s) no larger than {MAX_SLIDE_SIDE} px; {len(tiled) - 1} other instance(s) left out; "
        "coordinates are slide coordinates, not patient ones, and there is no slice distance"
    )
    if pixel_spacing is None:
        notes.append(_no_spacing_note(level))
    array = matrix[None]
    is_color = array.ndim == 4
    window, voi_lut_function = (
        (None, "LINEAR") if is_color else _window_of([_frames_of(level)[0]], array, notes)
    )
    frame_of_reference_uid = level.get("FrameOfReferenceUID")
    return Volume(
        array=array,
        datasets=[level],
        spacing=None,
        origin=None,
        row_direction=None,
        column_direction=None,
        slice_direction=None,
        modality=str(level.get("Modality", "SM")),
        notes=notes,
        frame_sources=[FrameSource(level, None)],
        pixel_spacing=pixel_spacing,
        pixel_spacing_source=pixel_spacing_source,
        is_color=is_color,
        photometric_interpretation=str(level.get("PhotometricInterpretation", "")),
        inverted=_is_inverted(level),
        window=window,
        voi_lut_function=voi_lut_function,
        frame_of_reference_uid=str(frame_of_reference_uid) if frame_of_reference_uid else None,
    )


def _tile_origins(level: Dataset, count: int) -> list[tuple[int, int]]:
    """0-based ``(row, column)`` of each tile's top left pixel in the total pixel matrix."""
    tile_rows, tile_columns = int(level.Rows), int(level.Columns)
    if str(level.get("DimensionOrganizationType", "")) == "TILED_FULL":
        per_row = math.ceil(_total_matrix(level)[1] / tile_columns)
        return [((i // per_row) * tile_rows, (i % per_row) * tile_columns) for i in range(count)]
    origins = []
    for index in range(count):
        position = _FunctionalGroups(level, index).item("PlanePositionSlideSequence")
        if position is None:
            raise LoadError(
                f"whole-slide instance {level.get('SOPInstanceUID', '?')}: frame {index + 1} has no Plane "
                "Position (Slide), so its tile cannot be placed"
            )
        origins.append(
            (
                int(position.RowPositionInTotalImagePixelMatrix) - 1,
                int(position.ColumnPositionInTotalImagePixelMatrix) - 1,
            )
        )
    return origins
