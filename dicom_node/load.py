"""Turn a spooled series into a volume with its geometry (DESIGN.md 3.4).

The volume is indexed ``[slice, row, column]``; slices are sorted by their position along the slice
normal. ``spacing`` is ``(slice distance, row spacing, column spacing)`` in mm, the slice distance measured
from the positions (never from SliceThickness, which real series get wrong: 1 mm slices 5 mm apart).
Modality LUT (rescale) is applied, so CT values are Hounsfield units.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from dicom_node.errors import LoadError

logger = logging.getLogger(__name__)


@dataclass
class Volume:
    """Pixel data of one series plus what measurement and encoding code needs to know."""

    array: np.ndarray
    datasets: list[Dataset]
    spacing: tuple[float, float, float]
    origin: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    slice_direction: np.ndarray
    modality: str
    notes: list[str] = field(default_factory=list)

    @property
    def voxel_volume_ml(self) -> float:
        slice_distance, row_spacing, column_spacing = self.spacing
        return slice_distance * row_spacing * column_spacing / 1000.0

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    def patient_position_of(self, slice_index: int, row: float, column: float) -> np.ndarray:
        """Patient coordinates (mm, LPS) of a pixel centre."""
        row_spacing, column_spacing = self.spacing[1], self.spacing[2]
        return (
            np.asarray(self.datasets[slice_index].ImagePositionPatient, dtype=float)
            + self.row_direction * column * column_spacing
            + self.column_direction * row * row_spacing
        )


def read_series(paths: Sequence[str | Path]) -> list[Dataset]:
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as exc:
            raise LoadError(f"cannot read {Path(path).name}: {exc}") from exc
    if not datasets:
        raise LoadError("the series holds no instances")
    return datasets


def _geometry_of(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
        position = np.asarray(dataset.ImagePositionPatient, dtype=float)
    except AttributeError as exc:
        raise LoadError(f"instance {dataset.SOPInstanceUID} has no plane geometry: {exc}") from None
    return orientation[:3], orientation[3:], position


def load_volume(datasets: Sequence[Dataset]) -> Volume:
    """Sort single-frame slices by position and stack them; raise ``LoadError`` with the reason."""
    datasets = [d for d in datasets if "PixelData" in d]
    if not datasets:
        raise LoadError("no instance of the series carries pixel data")
    if any(int(d.get("NumberOfFrames", 1) or 1) > 1 for d in datasets):
        raise LoadError("multi-frame series are not supported yet")
    row_direction, column_direction, _ = _geometry_of(datasets[0])
    normal = np.cross(row_direction, column_direction)
    notes: list[str] = []
    for dataset in datasets[1:]:
        other_row, other_column, _ = _geometry_of(dataset)
        if not (
            np.allclose(other_row, row_direction, atol=1e-3)
            and np.allclose(other_column, column_direction, atol=1e-3)
        ):
            raise LoadError("slices of the series have different orientations")
    shapes = {(int(d.Rows), int(d.Columns)) for d in datasets}
    if len(shapes) > 1:
        raise LoadError(f"slices of the series have different sizes: {sorted(shapes)}")
    distances = np.array([float(np.dot(_geometry_of(d)[2], normal)) for d in datasets])
    order = np.argsort(distances, kind="stable")
    datasets = [datasets[i] for i in order]
    distances = distances[order]
    if len(datasets) > 1:
        steps = np.diff(distances)
        if np.any(steps < 1e-3):
            raise LoadError("two slices of the series share one position")
        slice_distance = float(np.median(steps))
        if np.max(np.abs(steps - slice_distance)) > 0.01 * slice_distance + 1e-3:
            notes.append(
                f"slice distance varies from {steps.min():.3f} to {steps.max():.3f} mm; using the median "
                f"{slice_distance:.3f} mm"
            )
    else:
        slice_distance = float(datasets[0].get("SliceThickness", 1.0) or 1.0)
    thickness = datasets[0].get("SliceThickness")
    if thickness and len(datasets) > 1 and abs(float(thickness) - slice_distance) > 0.01:
        notes.append(
            f"SliceThickness is {float(thickness):g} mm but slices are {slice_distance:g} mm apart; "
            "volumes use the distance between slice positions"
        )
    frames_of_reference = {str(d.get("FrameOfReferenceUID", "")) for d in datasets}
    if len(frames_of_reference) > 1:
        notes.append(
            f"the series' {len(datasets)} slices carry {len(frames_of_reference)} different FrameOfReferenceUIDs "
            "with one consistent geometry; results use the first slice's frame of reference"
        )
    pixel_spacing = datasets[0].get("PixelSpacing") or datasets[0].get("ImagerPixelSpacing")
    if not pixel_spacing:
        raise LoadError("the series has no PixelSpacing; measurements would be guesses")
    try:
        array = np.stack([apply_modality_lut(d.pixel_array, d).astype(np.float32) for d in datasets])
    except Exception as exc:
        raise LoadError(f"pixel data does not decode: {exc}") from exc
    for note in notes:
        logger.info("series %s: %s", datasets[0].SeriesInstanceUID, note)
    return Volume(
        array=array,
        datasets=list(datasets),
        spacing=(slice_distance, float(pixel_spacing[0]), float(pixel_spacing[1])),
        origin=np.asarray(datasets[0].ImagePositionPatient, dtype=float),
        row_direction=row_direction,
        column_direction=column_direction,
        slice_direction=normal,
        modality=str(datasets[0].get("Modality", "")),
        notes=notes,
    )
