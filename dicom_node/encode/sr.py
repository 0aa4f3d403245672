"""Comprehensive 3D SR, TID 1500 Measurement Report, of one segmentation result.

Per structure with voxels it holds two measurement groups sharing one Tracking Identifier (the structure
name) and one Tracking UID, the pair OHIF 3.13.2 opens cleanly (DESIGN.md 7):

* TID 1411 (volumetric): references the structure's SEG segment; Volume in ml (voxel count times
  ``volume.voxel_volume_ml``, whose slice distance comes from the slice positions) and, for CT, the mean
  attenuation in HU;
* TID 1410 (planar): a closed 2D POLYLINE outlining the largest connected part of the structure on its key
  slice (the slice where its area is largest), referencing that source image; the structure's Area on
  that slice in mm2.

Empty structures get no groups (a group without a 2D outline crashes OHIF); their segment stays in the SEG.
Image coordinates follow DICOM: (column, row), the top-left corner of the top-left pixel is (0, 0).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage

from dicom_node.encode.codes import (
    AREA,
    ATTENUATION_COEFFICIENT,
    HOUNSFIELD_UNIT,
    MEAN,
    MILLILITER,
    SQUARE_MILLIMETER,
    VOLUME,
    procedure_reported,
    structure_codes,
)
from dicom_node.encode.common import (
    EncodingContext,
    OutputKind,
    add_contributing_equipment,
    long_string,
    output_uids,
    series_number,
    tracking_uid,
)
from dicom_node.encode.seg import checked_masks, result_entropy, segment_label
from dicom_node.errors import EncodeError
from dicom_node.uids import deterministic_uid

if TYPE_CHECKING:
    from dicom_node.load import Volume

logger = logging.getLogger(__name__)

MAX_OUTLINE_POINTS = 200
MeasurementGroup = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
)

# Moore neighbourhood, clockwise on screen (rows grow downwards), starting west.
_NEIGHBOURS = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))


def key_slice(mask: np.ndarray) -> int:
    """Index of the slice where ``mask`` ([slice, row, column]) covers the most pixels (the first on ties)."""
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


def _largest_component(image: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(image, structure=np.ones((3, 3), bool))
    if count <= 1:
        return labelled > 0
    sizes = ndimage.sum_labels(image, labelled, index=np.arange(1, count + 1))
    return labelled == int(np.argmax(sizes)) + 1


def _trace_boundary(component: np.ndarray) -> list[tuple[int, int]]:
    """Moore-neighbour tracing of one 8-connected component's outer boundary, as (row, column) pixels."""
    padded = np.pad(component, 1)
    rows, columns = np.nonzero(padded)
    start = (int(rows[0]), int(columns[0]))  # top-most, then left-most: its west neighbour is background
    boundary = [start]
    current, entered_from = start, 0
    second: tuple[int, int] | None = None
    for _ in range(8 * padded.size):
        for step in range(1, 9):
            direction = (entered_from + step) % 8
            candidate = (current[0] + _NEIGHBOURS[direction][0], current[1] + _NEIGHBOURS[direction][1])
            if padded[candidate]:
                previous = (entered_from + step - 1) % 8
                background = (current[0] + _NEIGHBOURS[previous][0], current[1] + _NEIGHBOURS[previous][1])
                offset = (background[0] - candidate[0], background[1] - candidate[1])
                entered_from = _NEIGHBOURS.index(offset)
                break
        else:
            return [(start[0] - 1, start[1] - 1)]  # a single pixel
        if current == start and candidate == second:
            break
        if second is None:
            second = candidate
        current = candidate
        boundary.append(current)
    if len(boundary) > 1 and boundary[-1] == start:
        boundary.pop()
    return [(r - 1, c - 1) for r, c in boundary]


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on an open polyline of (x, y) points, keeping both ends."""
    keep = np.zeros(len(points), bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        segment = points[last] - points[first]
        inner = points[first + 1 : last] - points[first]
        length = float(np.hypot(*segment))
        if length == 0:
            distances = np.hypot(inner[:, 0], inner[:, 1])
        else:
            distances = np.abs(segment[0] * inner[:, 1] - segment[1] * inner[:, 0]) / length
        farthest = int(np.argmax(distances))
        if distances[farthest] > tolerance:
            middle = first + 1 + farthest
            keep[middle] = True
            stack += [(first, middle), (middle, last)]
    return points[keep]


def outline(image: np.ndarray, max_points: int = MAX_OUTLINE_POINTS) -> np.ndarray:
    """Closed outline of the largest connected part of a 2D mask: (n, 2) (column, row), first == last.

    Vertices are boundary pixel centres (x + 0.5, y + 0.5); a part too small to have an outline gets the
    rectangle around it. At most ``max_points`` vertices, the closing one included.
    """
    component = _largest_component(np.asarray(image, bool))
    if not component.any():
        raise ValueError("Invalid 'image' value - the mask is empty, it has no outline")
    boundary = np.array([(c + 0.5, r + 0.5) for r, c in _trace_boundary(component)], dtype=float)
    if len(np.unique(boundary, axis=0)) < 3:
        rows, columns = np.nonzero(component)
        x0, x1, y0, y1 = columns.min(), columns.max() + 1.0, rows.min(), rows.max() + 1.0
        boundary = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=float)
    closed = np.vstack([boundary, boundary[:1]])
    tolerance = 0.5
    simplified = _simplify(closed, tolerance)
    while len(simplified) > max_points:
        tolerance *= 1.5
        simplified = _simplify(closed, tolerance)
    return simplified


def _device_observer(context: EncodingContext) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=deterministic_uid(
            context.uid_prefix, "device", context.node_ae_title.strip(), context.model_name
        ),
        name=long_string(context.node_ae_title.strip()),
        manufacturer_name=long_string(context.manufacturer),
        model_name=long_string(context.model_name),
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def _segment_numbers(seg: Dataset) -> dict[str, int]:
    return {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}


def _structure_groups(
    volume: Volume,
    seg: Dataset,
    segment_number: int,
    label: str,
    mask: np.ndarray,
    algorithm: hd.sr.AlgorithmIdentification,
    uid: str,
) -> list[MeasurementGroup]:
    structure = structure_codes(label)
    finding_sites = (
        [hd.sr.FindingSite(anatomic_location=structure.type, laterality=structure.laterality)]
        if structure.laterality is not None
        else None
    )
    tracking = hd.sr.TrackingIdentifier(uid=uid, identifier=segment_label(label))
    voxel_count = int(np.count_nonzero(mask))
    measurements = [
        hd.sr.Measurement(
            name=VOLUME,
            value=round(voxel_count * volume.voxel_volume_ml, 3),
            unit=MILLILITER,
            algorithm_id=algorithm,
        )
    ]
    if volume.modality.upper() == "CT":
        measurements.append(
            hd.sr.Measurement(
                name=ATTENUATION_COEFFICIENT,
                value=round(float(volume.array[mask].mean()), 1),
                unit=HOUNSFIELD_UNIT,
                derivation=MEAN,
                algorithm_id=algorithm,
            )
        )
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment_number,
            source_images=[
                hd.sr.SourceImageForSegmentation(d.SOPClassUID, d.SOPInstanceUID) for d in volume.datasets
            ],
        ),
        finding_type=structure.type,
        finding_category=structure.category,
        finding_sites=finding_sites,
        algorithm_id=algorithm,
        measurements=measurements,
    )
    index = key_slice(mask)
    source = volume.datasets[index]
    _, row_spacing, column_spacing = volume.spacing
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline(mask[index]),
            source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
        ),
        finding_type=structure.type,
        finding_category=structure.category,
        finding_sites=finding_sites,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=AREA,
                value=round(int(np.count_nonzero(mask[index])) * row_spacing * column_spacing, 1),
                unit=SQUARE_MILLIMETER,
                algorithm_id=algorithm,
            )
        ],
    )
    return [volumetric, planar]


def encode_sr(
    volume: Volume,
    seg: Dataset,
    masks: Mapping[str, np.ndarray],
    algorithm_name: str,
    algorithm_version: str,
    context: EncodingContext,
) -> Dataset:
    """A TID 1500 Measurement Report of ``masks`` over ``volume``, referencing ``seg`` (from ``encode_seg``).

    The evidence lists every source slice and the SEG. Completion PARTIAL, verification UNVERIFIED.
    ``EncodeError`` when every mask is empty (TID 1500 needs at least one measurement group).
    """
    checked = checked_masks(volume, masks)
    labels = list(checked)
    if not any(mask.any() for mask in checked.values()):
        raise EncodeError("Invalid 'masks' value - every structure is empty, there is nothing to measure")
    segment_numbers = _segment_numbers(seg)
    missing = [label for label in labels if segment_label(label) not in segment_numbers]
    if missing:
        raise EncodeError(
            f"Invalid 'seg' value {seg.SOPInstanceUID} - it has no segment labelled {', '.join(missing)}"
        )
    entropy = result_entropy(algorithm_name, algorithm_version, labels)
    series_instance_uid, sop_instance_uid = output_uids(context, volume, OutputKind.SR, *entropy)
    algorithm = hd.sr.AlgorithmIdentification(
        name=long_string(algorithm_name), version=long_string(algorithm_version)
    )
    groups: list[MeasurementGroup] = []
    for number, label in enumerate(labels, start=1):
        if not checked[label].any():
            logger.info("SR %s: structure %d is empty; no measurement group", sop_instance_uid, number)
            continue
        groups += _structure_groups(
            volume,
            seg,
            segment_numbers[segment_label(label)],
            label,
            checked[label],
            algorithm,
            tracking_uid(context, volume, label, algorithm_name, algorithm_version),
        )
    try:
        report = hd.sr.MeasurementReport(
            observation_context=_device_observer(context),
            procedure_reported=procedure_reported(volume.datasets[0]),
            imaging_measurements=groups,
            referenced_images=volume.datasets,
        )
        document = hd.sr.Comprehensive3DSR(
            evidence=[*volume.datasets, seg],
            content=report,
            series_instance_uid=series_instance_uid,
            series_number=series_number(context, OutputKind.SR),
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=context.manufacturer,
            institution_name=context.institution_name,
            is_complete=False,
            is_verified=False,
            series_description=long_string(f"AI measurements ({algorithm_name})"),
            manufacturer_model_name=context.model_name,
            software_versions=long_string(context.software_version),
            device_serial_number=context.node_ae_title.strip(),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodeError(f"cannot build an SR over series {volume.series_instance_uid}: {exc}") from exc
    add_contributing_equipment(document, context, algorithm_name, algorithm_version)
    logger.info(
        "SR %s: %d measurement groups over series %s, SEG %s",
        sop_instance_uid,
        len(groups),
        volume.series_instance_uid,
        seg.SOPInstanceUID,
    )
    return document
