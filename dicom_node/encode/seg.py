"""BINARY Segmentation (SEG) of one source series: one segment per structure, empty frames kept.

Frames are ordered by highdicom (segment by segment, then by position along the slice normal); each frame
references its source slice and carries its plane position. Every UID in the object, the Dimension
Organization UID included, is deterministic. A series whose slices carry different Frame of Reference UIDs
over one geometry (a de-identification artefact) is encoded in the first slice's frame of reference; the
caller's datasets are never changed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.encode.codes import coded_item, structure_codes
from dicom_node.encode.common import (
    EncodingContext,
    OutputKind,
    add_contributing_equipment,
    derived_uid,
    long_string,
    metadata_view,
    output_uids,
    segment_color,
    series_number,
    tracking_uid,
)
from dicom_node.errors import EncodeError

if TYPE_CHECKING:
    from dicom_node.load import Volume

logger = logging.getLogger(__name__)


def ordered_labels(masks: Mapping[str, np.ndarray]) -> list[str]:
    """Structure labels in segment order (sorted), so segment numbers are stable across runs."""
    return sorted(masks)


def checked_masks(volume: Volume, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``masks`` as boolean arrays in segment order; ``EncodeError`` naming the label that does not fit."""
    if not masks:
        raise EncodeError("Invalid 'masks' value {} - at least one structure mask is needed")
    checked = {}
    for label in ordered_labels(masks):
        if not str(label).strip():
            raise EncodeError(f"Invalid 'masks' label {label!r} - a structure label must not be empty")
        mask = np.asarray(masks[label])
        if mask.shape != volume.array.shape:
            raise EncodeError(
                f"Invalid mask '{label}' shape {mask.shape} - must match the volume's {volume.array.shape}"
            )
        checked[label] = mask.astype(bool, copy=False)
    written = [segment_label(label) for label in checked]
    duplicates = sorted({label for label in written if written.count(label) > 1})
    if duplicates:
        raise EncodeError(f"Invalid 'masks' labels - {duplicates} would name more than one segment")
    return checked


def segment_label(label: str) -> str:
    """The Segment Label written for a structure label (stripped, at most 64 characters)."""
    return long_string(str(label).strip())


def result_entropy(algorithm_name: str, algorithm_version: str, labels: list[str]) -> tuple[str, ...]:
    """What distinguishes one result on a series from another: the algorithm and the structures."""
    return (algorithm_name, algorithm_version, "\\".join(labels))


def unified_sources(volume: Volume) -> list[Dataset]:
    """Metadata views of the source slices sharing the first slice's Frame of Reference UID."""
    first = volume.datasets[0]
    frame_of_reference_uid = first.get("FrameOfReferenceUID")
    distinct = {str(d.get("FrameOfReferenceUID", "")) for d in volume.datasets}
    if frame_of_reference_uid is None or len(distinct) == 1:
        return [metadata_view(d) for d in volume.datasets]
    logger.warning(
        "series %s: %d slices carry %d Frame of Reference UIDs; the SEG uses the first slice's, %s",
        volume.series_instance_uid,
        len(volume.datasets),
        len(distinct),
        frame_of_reference_uid,
    )
    return [metadata_view(d, frame_of_reference_uid=str(frame_of_reference_uid)) for d in volume.datasets]


def algorithm_identification(
    algorithm_name: str, algorithm_version: str
) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification with family "Artificial Intelligence" (CID 7162)."""
    return hd.AlgorithmIdentificationSequence(
        name=long_string(algorithm_name),
        family=codes.cid7162.ArtificialIntelligence,
        version=long_string(algorithm_version),
    )


def _segment_description(
    number: int, label: str, algorithm: hd.AlgorithmIdentificationSequence, uid: str
) -> hd.seg.SegmentDescription:
    structure = structure_codes(label)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment_label(label),
        segmented_property_category=structure.category,
        segmented_property_type=structure.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=uid,
        tracking_id=segment_label(label),
        display_color=hd.color.CIELabColor.from_rgb(*segment_color(number - 1)),
    )
    if structure.laterality is not None:
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        type_item.SegmentedPropertyTypeModifierCodeSequence = [coded_item(structure.laterality)]
    return description


def _make_dimension_organization_deterministic(segmentation: Dataset, uid: str) -> None:
    """Replace highdicom's random Dimension Organization UID, so re-running a job writes the same object."""
    for item in [*segmentation.DimensionOrganizationSequence, *segmentation.DimensionIndexSequence]:
        item.DimensionOrganizationUID = uid


def encode_seg(
    volume: Volume,
    masks: Mapping[str, np.ndarray],
    algorithm_name: str,
    algorithm_version: str,
    context: EncodingContext,
) -> Dataset:
    """A BINARY SEG of ``masks`` (label -> boolean array shaped like ``volume.array``) over ``volume``.

    Segment ``n`` is the n-th label in sorted order; every slice has a frame for every segment, empty or
    not, so the SEG has ``slices x segments`` frames. UIDs are deterministic (see ``output_uids``).
    """
    checked = checked_masks(volume, masks)
    labels = list(checked)
    entropy = result_entropy(algorithm_name, algorithm_version, labels)
    series_instance_uid, sop_instance_uid = output_uids(context, volume, OutputKind.SEG, *entropy)
    algorithm = algorithm_identification(algorithm_name, algorithm_version)
    descriptions = [
        _segment_description(
            number, label, algorithm, tracking_uid(context, volume, label, algorithm_name, algorithm_version)
        )
        for number, label in enumerate(labels, start=1)
    ]
    pixel_array = np.stack([checked[label] for label in labels], axis=-1)
    try:
        segmentation = hd.seg.Segmentation(
            source_images=unified_sources(volume),
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_instance_uid,
            series_number=series_number(context, OutputKind.SEG),
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=context.manufacturer,
            manufacturer_model_name=context.model_name,
            software_versions=long_string(context.software_version),
            device_serial_number=context.node_ae_title.strip(),
            content_label="SEGMENTATION",
            content_description=long_string(f"{algorithm_name} {algorithm_version}".strip()),
            series_description=long_string(f"AI segmentation ({algorithm_name})"),
            institution_name=context.institution_name,
            omit_empty_frames=False,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodeError(f"cannot build a SEG over series {volume.series_instance_uid}: {exc}") from exc
    _make_dimension_organization_deterministic(
        segmentation, derived_uid(context, volume, "dimensions", *entropy)
    )
    add_contributing_equipment(segmentation, context, algorithm_name, algorithm_version)
    logger.info(
        "SEG %s: %d segments over series %s", sop_instance_uid, len(labels), volume.series_instance_uid
    )
    return segmentation
