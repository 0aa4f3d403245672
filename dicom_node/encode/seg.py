"""Segmentation (SEG) of one source series: one segment per structure, empty frames kept by default.

BINARY by default (DESIGN.md 3.5: label-map SEG is rejected by older PACS); FRACTIONAL (PROBABILITY, up to
``max_fractional_value``) for probability maps, i.e. float masks in 0..1; LABELMAP only when the caller asks
for it (a destination that accepts Label Map Segmentation Storage).

Frames reference their source frame (Derivation Image / Source Image Sequence) and, for sources in a
patient frame of reference (CT, MR), carry its plane position; projection and ultrasound images (CR, DX,
US) get a single-frame SEG without plane positions; a multi-frame source (enhanced CT/MR) gets one frame per
source frame and segment, referencing its frame number; a tiled whole-slide image (SM) gets a SEG tiled
like the loaded level, its mask given over that level's Total Pixel Matrix, where the slide carries the
slide geometry the SEG must copy (``EncodeError`` naming what it lacks otherwise). Every UID in the object, the
Dimension Organization UID included, is deterministic. A series whose slices carry different Frame of
Reference UIDs over one geometry (a de-identification artefact) is encoded in the first slice's frame of
reference; the caller's datasets are never changed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Executor
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
    frame_shape,
    frame_sources,
    has_patient_geometry,
    is_tiled,
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

SegmentationType = hd.seg.SegmentationTypeValues
BINARY_THRESHOLD = 0.5


def ordered_labels(masks: Mapping[str, np.ndarray]) -> list[str]:
    """Structure labels in segment order (sorted), so segment numbers are stable across runs."""
    return sorted(masks)


def is_probability_map(mask: np.ndarray) -> bool:
    """Whether ``mask`` holds probabilities (a float array) rather than a boolean segmentation."""
    return np.asarray(mask).dtype.kind == "f"


def checked_masks(
    volume: Volume, masks: Mapping[str, np.ndarray], fractional: bool = False
) -> dict[str, np.ndarray]:
    """``masks`` in segment order, boolean (or float32 in 0..1 with ``fractional``); ``EncodeError`` naming
    the label that does not fit.

    Without ``fractional`` a probability map becomes the boolean mask of its values >= 0.5.
    """
    if not masks:
        raise EncodeError("Invalid 'masks' value {} - at least one structure mask is needed")
    expected = frame_shape(volume)
    checked = {}
    for label in ordered_labels(masks):
        if not str(label).strip():
            raise EncodeError(f"Invalid 'masks' label {label!r} - a structure label must not be empty")
        mask = np.asarray(masks[label])
        if mask.shape != expected:
            raise EncodeError(
                f"Invalid mask '{label}' shape {mask.shape} - must match the volume's {expected}"
            )
        if is_probability_map(mask):
            if not np.all(np.isfinite(mask)) or mask.min(initial=0.0) < 0.0 or mask.max(initial=0.0) > 1.0:
                raise EncodeError(f"Invalid mask '{label}' - probabilities must be finite and within 0..1")
            checked[label] = mask.astype(np.float32, copy=False) if fractional else mask >= BINARY_THRESHOLD
        else:
            checked[label] = mask.astype(np.float32) if fractional else mask.astype(bool, copy=False)
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
    datasets = [dataset for dataset, _ in frame_sources(volume)]
    first = datasets[0]
    frame_of_reference_uid = first.get("FrameOfReferenceUID")
    distinct = {str(d.get("FrameOfReferenceUID", "")) for d in datasets}
    if frame_of_reference_uid is None or len(distinct) == 1:
        return [metadata_view(d) for d in datasets]
    logger.warning(
        "series %s: %d slices carry %d Frame of Reference UIDs; the SEG uses the first slice's, %s",
        volume.series_instance_uid,
        len(datasets),
        len(distinct),
        frame_of_reference_uid,
    )
    return [metadata_view(d, frame_of_reference_uid=str(frame_of_reference_uid)) for d in datasets]


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


def _pixel_array(checked: Mapping[str, np.ndarray], segmentation_type: SegmentationType) -> np.ndarray:
    """The array highdicom gets: ``[frame, row, column]`` label values where structures do not overlap
    (checked in one pass; highdicom's own overlap check of a stacked boolean array is slow), else a
    ``[frame, row, column, segment]`` stack; float probabilities stacked for FRACTIONAL.
    """
    labels = list(checked)
    if segmentation_type is SegmentationType.FRACTIONAL:
        return np.stack([checked[label] for label in labels], axis=-1)
    dtype = np.uint8 if len(labels) < 255 else np.uint16
    coverage = np.zeros(next(iter(checked.values())).shape, dtype=dtype)
    for mask in checked.values():
        coverage += mask
    if int(coverage.max(initial=0)) <= 1:
        label_map = np.zeros_like(coverage)
        for number, label in enumerate(labels, start=1):
            label_map[checked[label]] = number
        return label_map
    if segmentation_type is SegmentationType.LABELMAP:
        overlapping = [
            f"'{a}' and '{b}'"
            for index, a in enumerate(labels)
            for b in labels[index + 1 :]
            if np.any(checked[a] & checked[b])
        ]
        raise EncodeError(
            f"Invalid 'masks' for a LABELMAP SEG - structures {', '.join(overlapping)} overlap; "
            "a label map holds one structure per pixel (use BINARY)"
        )
    return np.stack([checked[label] for label in labels], axis=-1)


def missing_slide_geometry(dataset: Dataset) -> list[str]:
    """The slide geometry a tiled SEG copies from a whole-slide image that ``dataset`` lacks."""
    missing = [
        keyword
        for keyword in ("TotalPixelMatrixOriginSequence", "ImageOrientationSlide", "OpticalPathSequence")
        if keyword not in dataset
    ]
    shared = dataset.get("SharedFunctionalGroupsSequence") or [Dataset()]
    measures = shared[0].get("PixelMeasuresSequence") or [Dataset()]
    missing += [
        f"PixelMeasuresSequence {k}" for k in ("PixelSpacing", "SliceThickness") if k not in measures[0]
    ]
    return missing


def _sources_and_frames(volume: Volume, pixel_array: np.ndarray) -> tuple[list[Dataset], np.ndarray, bool]:
    """``(source images, pixel array in their frame order, tile_pixel_array)`` for highdicom.

    Single-frame sources: one view per frame, in volume order. One multi-frame source: its view, the frames
    reordered to its frame numbers (highdicom pairs array frame ``i`` with source frame ``i + 1``). A tiled
    whole-slide image: its view and the volume's one frame as the Total Pixel Matrix to tile.
    """
    sources = frame_sources(volume)
    numbers = [number for _, number in sources]
    if all(number is None for number in numbers):
        if len(sources) == 1 and is_tiled(sources[0][0]):
            source = sources[0][0]
            missing = missing_slide_geometry(source)
            if missing:
                raise EncodeError(
                    f"cannot build a SEG over whole-slide image {source.SOPInstanceUID}: it lacks {', '.join(missing)} "
                    "(Type 1 in the VL Whole Slide Microscopy IOD); a SEG would need slide geometry made up"
                )
            expected = (int(source.TotalPixelMatrixRows), int(source.TotalPixelMatrixColumns))
            if pixel_array.shape[1:3] != expected:
                raise EncodeError(
                    f"Invalid mask shape {pixel_array.shape[1:3]} over whole-slide image "
                    f"{source.SOPInstanceUID} - must match its Total Pixel Matrix {expected}"
                )
            return [metadata_view(source)], pixel_array[0], True
        return unified_sources(volume), pixel_array, False
    instances = {str(dataset.SOPInstanceUID) for dataset, _ in sources}
    source = sources[0][0]
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if len(instances) > 1 or None in numbers or sorted(numbers) != list(range(1, frames + 1)):
        raise EncodeError(
            f"cannot build a SEG over series {volume.series_instance_uid}: its frames come from "
            f"{len(instances)} instance(s) and cover {len(numbers)} of {frames} frames; a SEG over multi-frame "
            "sources needs every frame of exactly one instance"
        )
    order = np.argsort(numbers)
    return [metadata_view(source)], pixel_array[order], False


def _drop_unknown_pixel_spacing(segmentation: Dataset) -> None:
    """Remove a Pixel Measures item whose Pixel Spacing is zero (copied from a source that does not know its
    spacing, like the CR that says 0.000): an unknown spacing is left out, never written as 0."""
    shared = segmentation.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if measures and any(float(v) <= 0 for v in measures[0].get("PixelSpacing", [1.0])):
        del shared.PixelMeasuresSequence


def _set_patient_orientation(segmentation: Dataset, source: Dataset) -> None:
    """Write Patient Orientation (General Image, Type 2C) as the source gives it, empty where it gives none.

    Required where the frames carry no Image Orientation (Patient) (projection and ultrasound images). A SEG
    over a slide orients its frames with Image Orientation (Slide): there the attribute "may be present",
    zero length when other attributes give the orientation (PS3.3 C.7.6.1), and dciodvfy asks for it.
    """
    segmentation.PatientOrientation = source.get("PatientOrientation") or None


def encode_seg(
    volume: Volume,
    masks: Mapping[str, np.ndarray],
    algorithm_name: str,
    algorithm_version: str,
    context: EncodingContext,
    *,
    segmentation_type: SegmentationType | str | None = None,
    omit_empty_frames: bool = False,
    max_fractional_value: int = 255,
    workers: int | Executor = 0,
) -> Dataset:
    """A SEG of ``masks`` (label -> array shaped ``[frame, row, column]`` like ``volume``) over ``volume``.

    ``segmentation_type`` None chooses FRACTIONAL when a mask is a float probability map (values 0..1,
    stored as 0..``max_fractional_value``) and BINARY otherwise; "BINARY" of a probability map keeps the
    pixels >= 0.5; "LABELMAP" needs structures that do not overlap. Segment ``n`` is the n-th label in
    sorted order. With ``omit_empty_frames`` False (the default; viewers misplace SEGs that omit them)
    every source frame has a frame for every segment (BINARY/FRACTIONAL) or one frame (LABELMAP).
    ``workers`` is passed to highdicom (threads or an executor that compress frames). UIDs are
    deterministic (see ``output_uids``).
    """
    if segmentation_type is None:
        fractional = any(is_probability_map(mask) for mask in masks.values())
        segmentation_type = SegmentationType.FRACTIONAL if fractional else SegmentationType.BINARY
    try:
        segmentation_type = SegmentationType(segmentation_type)
    except ValueError:
        raise EncodeError(
            f"Invalid 'segmentation_type' value {segmentation_type!r} - must be one of "
            f"{[t.value for t in SegmentationType]}"
        ) from None
    if segmentation_type is SegmentationType.LABELMAP and any(is_probability_map(m) for m in masks.values()):
        raise EncodeError("Invalid 'masks' for a LABELMAP SEG - probability maps need FRACTIONAL")
    if not 1 <= max_fractional_value <= 255:
        raise EncodeError(f"Invalid 'max_fractional_value' value {max_fractional_value} - must be 1 to 255")
    checked = checked_masks(volume, masks, fractional=segmentation_type is SegmentationType.FRACTIONAL)
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
    source_images, pixel_array, tile_pixel_array = _sources_and_frames(
        volume, _pixel_array(checked, segmentation_type)
    )
    options: dict[str, object] = {}
    if segmentation_type is SegmentationType.FRACTIONAL:
        options["fractional_type"] = hd.seg.SegmentationFractionalTypeValues.PROBABILITY
        options["max_fractional_value"] = max_fractional_value
    try:
        segmentation = hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=pixel_array,
            segmentation_type=segmentation_type,
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
            omit_empty_frames=omit_empty_frames,
            tile_pixel_array=tile_pixel_array,
            workers=workers,
            **options,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise EncodeError(f"cannot build a SEG over series {volume.series_instance_uid}: {exc}") from exc
    _make_dimension_organization_deterministic(
        segmentation, derived_uid(context, volume, "dimensions", *entropy)
    )
    if tile_pixel_array or not has_patient_geometry(source_images[0]):
        _set_patient_orientation(segmentation, source_images[0])
    if not tile_pixel_array and not has_patient_geometry(source_images[0]):
        _drop_unknown_pixel_spacing(segmentation)
    add_contributing_equipment(segmentation, context, algorithm_name, algorithm_version)
    logger.info(
        "SEG %s: %s, %d segments, %d frames over series %s",
        sop_instance_uid,
        segmentation_type.value,
        len(labels),
        int(segmentation.NumberOfFrames),
        volume.series_instance_uid,
    )
    return segmentation
