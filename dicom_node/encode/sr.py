"""Comprehensive 3D SR, TID 1500 Measurement Report, of any tool result (DESIGN.md 3.2, 3.5).

What a result holds becomes (every measurement group carries a 2D SCOORD, the rule OHIF 3.13.2 needs,
DESIGN.md 7):

* masks (with the SEG made of them), per structure with pixels, two groups sharing one Tracking Identifier
  (the structure name) and one Tracking UID, the pair OHIF opens cleanly:

  - sources in a patient frame of reference (CT, MR): TID 1411 (volumetric) referencing the SEG segment,
    Volume in ml (voxel count times ``volume.voxel_volume_ml``, whose slice distance comes from the slice
    positions) and, for CT, the mean attenuation in HU; single 2D images (CR, DX, US) and whole-slide
    images: TID 1410 referencing the segment's SEG frame (on a slide, every tile of the segment in its tiled
    SEG); a slide whose SEG could not be built (it lacks slide geometry) gets the outline group alone;
  - TID 1410: a closed 2D POLYLINE outlining the largest connected part of the structure on its key frame
    (where its area is largest), referencing that source frame, with the structure's Area there in mm2;

* boxes (of a result without masks, e.g. grounding): one TID 1410 group per box, a closed POLYLINE
  rectangle on its frame, Tracking Identifier = the box's label, its own Tracking UID, the detector's score
  as Probability and the box area in mm2; the boxes that prompted a segmentation are left out, its
  outlines show where the structures are;
* labels (classification): CODE items "Finding" = the label in TID 1500's Qualitative Evaluations
  container, each with its Probability as a NUM property (a measurement group without an ROI would crash
  OHIF, so classifications are not put in one);
* text: a report's sections as TEXT "Finding" / "Impression"; an answer (retrieval, VQA) as TEXT "Answer"
  after the "Question", and each cited source as TEXT "Citation" (the node's coding scheme 99MEDAGENT,
  declared in the Coding Scheme Identification Sequence).

A result with no group of its own (a classification, a report, an answer) gets one TID 1410 group outlining
its whole key frame (the middle one): dcmjs's MeasurementReport and several OHIF 3 releases read the Imaging
Measurements container and the Image Library without checking that they exist. Empty structures get no
groups; their segment stays in the SEG. Measurements in mm are made only where the source gives a pixel
spacing. The Image Library lists the images the SCOORDs point at; the evidence lists every source instance
and the SEG. Completion PARTIAL and verification UNVERIFIED: AI output, unread.
Image coordinates follow DICOM: (column, row), the top-left corner of the top-left pixel is (0, 0). On a
whole-slide image the loaded pyramid level is the one frame of the volume: SCOORDs reference that level's
instance without a frame number and with Pixel Origin Interpretation VOLUME, so their coordinates are in
its Total Pixel Matrix, not in one tile; areas on a slide are in mm2 too (a few thousandths for a gland).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.encode.codes import (
    ANSWER,
    AREA,
    ATTENUATION_COEFFICIENT,
    CITATION,
    FINDING,
    HOUNSFIELD_UNIT,
    IMPRESSION,
    LOCAL_SCHEME,
    LOCAL_SCHEME_NAME,
    MEAN,
    MILLILITER,
    NO_UNITS,
    PROBABILITY,
    QUALITATIVE_EVALUATIONS,
    QUESTION,
    SQUARE_MILLIMETER,
    VOLUME,
    classification_code,
    procedure_reported,
    structure_codes,
)
from dicom_node.encode.common import (
    EncodingContext,
    OutputKind,
    add_contributing_equipment,
    derived_uid,
    frame_shape,
    frame_sources,
    has_patient_geometry,
    is_colour,
    is_tiled,
    known_pixel_spacing,
    knows_voxel_volume,
    long_string,
    metadata_view,
    output_uids,
    series_number,
    source_instances,
    tracking_uid,
)
from dicom_node.encode.outline import MAX_OUTLINE_POINTS, box_outline, key_slice, outline
from dicom_node.encode.seg import checked_masks, result_entropy, segment_label
from dicom_node.errors import EncodeError
from dicom_node.uids import deterministic_uid
from tools.base import ToolResult, ToolStatus

if TYPE_CHECKING:
    from dicom_node.load import Volume
    from tools.base import Box

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_OUTLINE_POINTS",
    "encode_measurement_report",
    "encode_sr",
    "key_slice",
    "outline",
    "report_sections",
]

MeasurementGroup = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
)
_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
_HAS_PROPERTIES = hd.sr.RelationshipTypeValues.HAS_PROPERTIES
_SECTION_HEADING = re.compile(r"^[ \t]*(findings?|impressions?)[ \t]*:[ \t]*", re.IGNORECASE | re.MULTILINE)
_CITATION_FIELDS = ("title", "section", "heading", "source", "url", "reference", "text", "passage", "excerpt")


def report_sections(text: str) -> list[tuple[Code, str]]:
    """A report's text as ``(Finding | Impression, section text)`` pairs, by its "Findings:" and
    "Impression:" headings; text without headings is one Finding."""
    matches = list(_SECTION_HEADING.finditer(text))
    if not matches:
        return [(FINDING, text.strip())] if text.strip() else []
    sections = []
    preamble = text[: matches[0].start()].strip()
    if preamble:
        sections.append((FINDING, preamble))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        body = text[match.end() : following.start() if following else len(text)].strip()
        if body:
            sections.append(
                (IMPRESSION if match.group(1).lower().startswith("impression") else FINDING, body)
            )
    return sections


def citation_text(number: int, source: Mapping[str, str]) -> str:
    """One cited source as text: ``[n] title; section; source/url; "passage"`` (fields it lacks left out)."""
    parts = []
    for key in _CITATION_FIELDS:
        value = str(source.get(key, "") or "").strip()
        if value:
            parts.append(f'"{value}"' if key in ("text", "passage", "excerpt") else value)
    others = sorted(set(source) - set(_CITATION_FIELDS))
    parts += [f"{key}: {source[key]}" for key in others if str(source[key] or "").strip()]
    return f"[{number}] " + "; ".join(parts)


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


def _segments_of(volume: Volume, seg: Dataset | None, with_pixels: Sequence[str]) -> dict[str, int]:
    """The segment number of each structure label in ``with_pixels`` (structures with pixels) in ``seg``.

    ``seg`` may be None only over a whole-slide image, whose SEG cannot be built where the slide lacks
    geometry (the structures then get outline groups without a segment reference); ``EncodeError`` when a
    SEG is needed and missing, or lacks a structure.
    """
    if seg is None:
        if with_pixels and not any(is_tiled(dataset) for dataset in source_instances(volume)):
            raise EncodeError(
                "Invalid 'seg' value None - the SEG of the masks is needed to reference its segments"
            )
        return {}
    numbers = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    missing = [label for label in with_pixels if segment_label(label) not in numbers]
    if missing:
        raise EncodeError(
            f"Invalid 'seg' value {seg.SOPInstanceUID} - it has no segment labelled {', '.join(missing)}"
        )
    return {label: numbers[segment_label(label)] for label in with_pixels}


def _image_region(volume: Volume, index: int, points: np.ndarray) -> hd.sr.ImageRegion:
    """A closed 2D POLYLINE ``points`` ((column, row) pairs) on frame ``index`` of ``volume``.

    It references the frame's source image (with its frame number for a multi-frame source). On a tiled
    whole-slide image the frame is the loaded level's Total Pixel Matrix: the level is referenced without a
    frame number and the SCOORD says its Pixel Origin Interpretation is VOLUME (coordinates relative to the
    Total Pixel Matrix, not to one tile).
    """
    dataset, frame_number = frame_sources(volume)[index]
    source = hd.sr.SourceImageForRegion(
        dataset.SOPClassUID,
        dataset.SOPInstanceUID,
        referenced_frame_numbers=None if frame_number is None else [frame_number],
    )
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=points,
        source_image=source,
        pixel_origin_interpretation=(
            hd.sr.PixelOriginInterpretationValues.VOLUME if is_tiled(dataset) else None
        ),
    )


def _frame_attribute(seg: Dataset, frame: Dataset, keyword: str) -> Dataset | None:
    """A functional group of one SEG frame, per-frame or shared (highdicom shares what all frames share)."""
    if keyword in frame:
        return frame[keyword].value[0]
    shared = seg.SharedFunctionalGroupsSequence[0]
    return shared[keyword].value[0] if keyword in shared else None


def _seg_frame_numbers(
    seg: Dataset, segment_number: int, dataset: Dataset, frame_number: int | None
) -> list[int]:
    """The SEG frames of ``segment_number`` derived from ``dataset`` (frame ``frame_number``).

    One frame for a SEG over single images or frames; every frame of the segment for a tiled SEG (over a
    whole-slide image): its frames are tiles of the segment over the source's Total Pixel Matrix, derived
    from the source as a whole (highdicom lists the source once, in the SEG's Source Image Sequence).
    """
    if _is_tiled_segmentation(seg):
        return _tiled_seg_frame_numbers(seg, segment_number, dataset)
    frames = seg.get("PerFrameFunctionalGroupsSequence") or [Dataset()] * int(seg.NumberOfFrames)
    for number, frame in enumerate(frames, start=1):
        segment = _frame_attribute(seg, frame, "SegmentIdentificationSequence")
        if segment is None or int(segment.ReferencedSegmentNumber) != segment_number:
            continue
        derivation = _frame_attribute(seg, frame, "DerivationImageSequence")
        for source in derivation.SourceImageSequence if derivation is not None else []:
            if source.ReferencedSOPInstanceUID != dataset.SOPInstanceUID:
                continue
            if frame_number is None or int(source.get("ReferencedFrameNumber", 1)) == frame_number:
                return [number]
    raise EncodeError(
        f"Invalid 'seg' value {seg.SOPInstanceUID} - segment {segment_number} has no frame derived from "
        f"{dataset.SOPInstanceUID}"
    )


def _is_tiled_segmentation(seg: Dataset) -> bool:
    """Whether ``seg``'s frames are tiles of a Total Pixel Matrix (a SEG over a whole-slide image)."""
    return "TotalPixelMatrixRows" in seg


def _tiled_seg_frame_numbers(seg: Dataset, segment_number: int, dataset: Dataset) -> list[int]:
    """Every frame (tile) of ``segment_number`` in a tiled SEG that names ``dataset`` as its source."""
    sources = {str(item.ReferencedSOPInstanceUID) for item in seg.get("SourceImageSequence", [])}
    if str(dataset.SOPInstanceUID) not in sources:
        raise EncodeError(
            f"Invalid 'seg' value {seg.SOPInstanceUID} - it is not derived from whole-slide image "
            f"{dataset.SOPInstanceUID}"
        )
    frames = seg.get("PerFrameFunctionalGroupsSequence") or [Dataset()] * int(seg.NumberOfFrames)
    numbers = [
        number
        for number, frame in enumerate(frames, start=1)
        if (segment := _frame_attribute(seg, frame, "SegmentIdentificationSequence")) is not None
        and int(segment.ReferencedSegmentNumber) == segment_number
    ]
    if not numbers:
        raise EncodeError(f"Invalid 'seg' value {seg.SOPInstanceUID} - segment {segment_number} has no frame")
    return numbers


def _drop_segment_number_beside_frame_number(group: MeasurementGroup) -> None:
    """Remove Referenced Segment Number from a Referenced Segmentation Frame item that has a Referenced Frame
    Number: the Image SOP Instance Reference Macro forbids both (the frame implies the segment), highdicom
    writes both."""
    for item in group[0].ContentSequence:
        if item.ValueType == "IMAGE" and item.ConceptNameCodeSequence[0].CodeValue == "121214":
            reference = item.ReferencedSOPSequence[0]
            if "ReferencedFrameNumber" in reference and "ReferencedSegmentNumber" in reference:
                del reference.ReferencedSegmentNumber


def _area_measurement(
    pixels: float, spacing: tuple[float, float] | None, algorithm: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
    """The Area of ``pixels`` pixels in mm2, none where the spacing is unknown.

    Rounded to 6 significant digits, not to a fixed number of decimals: a region on a slide (pixels about
    1 um apart) covers a few thousandths of a mm2.
    """
    if spacing is None:
        return []
    return [
        hd.sr.Measurement(
            name=AREA,
            value=float(f"{pixels * spacing[0] * spacing[1]:.6g}"),
            unit=SQUARE_MILLIMETER,
            algorithm_id=algorithm,
        )
    ]


@dataclass(frozen=True)
class _Structure:
    """What every measurement group of one structure shares: tracking, finding codes, algorithm."""

    tracking: hd.sr.TrackingIdentifier
    type: Code
    category: Code
    finding_sites: list[hd.sr.FindingSite] | None
    algorithm: hd.sr.AlgorithmIdentification

    @classmethod
    def of(cls, label: str, uid: str, algorithm: hd.sr.AlgorithmIdentification) -> _Structure:
        coded = structure_codes(label)
        sites = None
        if coded.laterality is not None:
            sites = [hd.sr.FindingSite(anatomic_location=coded.type, laterality=coded.laterality)]
        return cls(
            tracking=hd.sr.TrackingIdentifier(uid=uid, identifier=segment_label(label)),
            type=coded.type,
            category=coded.category,
            finding_sites=sites,
            algorithm=algorithm,
        )


def _volumetric_segment_group(
    volume: Volume, seg: Dataset, segment_number: int, mask: np.ndarray, structure: _Structure
) -> MeasurementGroup:
    """TID 1411 referencing the SEG segment, with the Volume in ml and, for CT, the mean attenuation."""
    algorithm = structure.algorithm
    measurements = []
    if knows_voxel_volume(volume):
        measurements.append(
            hd.sr.Measurement(
                name=VOLUME,
                value=round(int(np.count_nonzero(mask)) * volume.voxel_volume_ml, 3),
                unit=MILLILITER,
                algorithm_id=algorithm,
            )
        )
    if volume.modality.upper() == "CT" and not is_colour(volume):
        measurements.append(
            hd.sr.Measurement(
                name=ATTENUATION_COEFFICIENT,
                value=round(float(volume.array[mask].mean()), 1),
                unit=HOUNSFIELD_UNIT,
                derivation=MEAN,
                algorithm_id=algorithm,
            )
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=structure.tracking,
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment_number,
            source_images=[
                hd.sr.SourceImageForSegmentation(d.SOPClassUID, d.SOPInstanceUID)
                for d in source_instances(volume)
            ],
        ),
        finding_type=structure.type,
        finding_category=structure.category,
        finding_sites=structure.finding_sites,
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _planar_segment_group(
    volume: Volume, seg: Dataset, segment_number: int, index: int, structure: _Structure
) -> MeasurementGroup:
    """TID 1410 referencing the segment's SEG frames derived from frame ``index`` of the volume: the one
    frame of a 2D image's SEG, every tile of a slide's tiled SEG."""
    dataset, frame_number = frame_sources(volume)[index]
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=structure.tracking,
        referenced_segment=hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            frame_number=_seg_frame_numbers(seg, segment_number, dataset, frame_number),
            segment_number=segment_number,
            source_image=hd.sr.SourceImageForSegmentation(
                dataset.SOPClassUID,
                dataset.SOPInstanceUID,
                referenced_frame_numbers=None if frame_number is None else [frame_number],
            ),
        ),
        finding_type=structure.type,
        finding_category=structure.category,
        finding_sites=structure.finding_sites,
        algorithm_id=structure.algorithm,
    )
    _drop_segment_number_beside_frame_number(group)
    return group


def _outline_group(
    volume: Volume, mask: np.ndarray, index: int, structure: _Structure
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410: the closed outline of the structure's largest part on frame ``index``, with its area there.

    On a tiled slide the frame is the loaded level's Total Pixel Matrix, referenced without a frame number.
    """
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=structure.tracking,
        referenced_region=_image_region(volume, index, outline(mask[index])),
        finding_type=structure.type,
        finding_category=structure.category,
        finding_sites=structure.finding_sites,
        algorithm_id=structure.algorithm,
        measurements=_area_measurement(
            int(np.count_nonzero(mask[index])), known_pixel_spacing(volume), structure.algorithm
        ),
    )


def _structure_groups(
    volume: Volume,
    segment: tuple[Dataset, int] | None,
    label: str,
    mask: np.ndarray,
    algorithm: hd.sr.AlgorithmIdentification,
    uid: str,
) -> list[MeasurementGroup]:
    """The groups of one structure, sharing its Tracking Identifier and UID: the one referencing its SEG
    segment (``segment``: the SEG and the segment number; TID 1411 in a patient frame of reference, else
    TID 1410), then its outline (TID 1410).

    Without ``segment`` (a slide whose SEG could not be built) the outline group alone.
    """
    structure = _Structure.of(label, uid, algorithm)
    index = key_slice(mask)
    groups: list[MeasurementGroup] = []
    if segment is not None and has_patient_geometry(frame_sources(volume)[index][0]):
        groups.append(_volumetric_segment_group(volume, *segment, mask, structure))
    elif segment is not None:
        groups.append(_planar_segment_group(volume, *segment, index, structure))
    groups.append(_outline_group(volume, mask, index, structure))
    return groups


def _box_group(
    volume: Volume,
    box: Box,
    algorithm: hd.sr.AlgorithmIdentification,
    uid: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    frames, rows, columns = frame_shape(volume)
    if not 0 <= box.frame < frames:
        raise EncodeError(
            f"Invalid box '{box.label}' frame {box.frame} - the volume has frames 0 to {frames - 1}"
        )
    x0, y0, x1, y1 = box.xyxy
    if not (0 <= x0 <= x1 < columns and 0 <= y0 <= y1 < rows):
        raise EncodeError(
            f"Invalid box '{box.label}' {tuple(box.xyxy)} - must lie within the {columns} x {rows} image"
        )
    structure = structure_codes(box.label)
    measurements = [
        hd.sr.Measurement(
            name=PROBABILITY, value=round(float(box.score), 4), unit=NO_UNITS, algorithm_id=algorithm
        )
    ]
    measurements += _area_measurement(
        (x1 - x0 + 1.0) * (y1 - y0 + 1.0), known_pixel_spacing(volume), algorithm
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=long_string(box.label.strip())),
        referenced_region=_image_region(volume, box.frame, box_outline(box.xyxy)),
        finding_type=structure.type,
        finding_category=structure.category,
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _whole_image_group(
    volume: Volume,
    result: ToolResult,
    question: str | None,
    algorithm: hd.sr.AlgorithmIdentification,
    uid: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """A TID 1410 group outlining the whole key frame (the middle one), for a result about the image as a
    whole (classification, report, answer).

    Viewers need one: dcmjs's MeasurementReport and several OHIF 3 releases read the Imaging Measurements
    container and its Image Library without checking that they exist. The group carries the most probable
    label as its finding and probability; everything else is in the Qualitative Evaluations container.
    """
    frames, rows, columns = frame_shape(volume)
    finding, measurements = None, []
    if result.labels:
        label = min(result.labels, key=lambda name: (-float(result.labels[name]), name))
        finding = classification_code(label)
        identifier = long_string(f"AI classification: {label.strip()}")
        measurements = [
            hd.sr.Measurement(
                name=PROBABILITY,
                value=round(float(result.labels[label]), 4),
                unit=NO_UNITS,
                algorithm_id=algorithm,
            )
        ]
    elif result.sources or question:
        identifier = "AI answer"
    else:
        identifier = "AI report"
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=identifier),
        referenced_region=_image_region(
            volume, frames // 2, box_outline((0.0, 0.0, columns - 1.0, rows - 1.0))
        ),
        finding_type=finding,
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _qualitative_evaluations(result: ToolResult, question: str | None) -> list[hd.sr.ContentItem]:
    """The items of TID 1500's Qualitative Evaluations container, in a fixed order."""
    items: list[hd.sr.ContentItem] = []
    for label in sorted(result.labels, key=lambda name: (-float(result.labels[name]), name)):
        probability = float(result.labels[label])
        if not 0.0 <= probability <= 1.0:
            raise EncodeError(f"Invalid probability {probability} of label '{label}' - must be within 0..1")
        evaluation = hd.sr.QualitativeEvaluation(name=FINDING, value=classification_code(label))[0]
        evaluation.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.NumContentItem(
                    name=PROBABILITY,
                    value=round(probability, 4),
                    unit=NO_UNITS,
                    relationship_type=_HAS_PROPERTIES,
                )
            ]
        )
        items.append(evaluation)
    text = result.text.strip()
    if question and question.strip():
        items.append(
            hd.sr.TextContentItem(name=QUESTION, value=question.strip(), relationship_type=_CONTAINS)
        )
    if text and (result.sources or question):
        items.append(hd.sr.TextContentItem(name=ANSWER, value=text, relationship_type=_CONTAINS))
    elif text:
        for concept, section in report_sections(text):
            items.append(hd.sr.TextContentItem(name=concept, value=section, relationship_type=_CONTAINS))
    for number, source in enumerate(result.sources, start=1):
        items.append(
            hd.sr.TextContentItem(
                name=CITATION, value=citation_text(number, source), relationship_type=_CONTAINS
            )
        )
    return items


def _uses_local_codes(items: Sequence[Dataset]) -> bool:
    for item in items:
        for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            if any(code.CodingSchemeDesignator == LOCAL_SCHEME for code in item.get(keyword, [])):
                return True
        if _uses_local_codes(item.get("ContentSequence", [])):
            return True
    return False


def _report_content(
    volume: Volume,
    context: EncodingContext,
    groups: Sequence[MeasurementGroup],
    evaluations: Sequence[hd.sr.ContentItem],
    referenced_images: Sequence[Dataset],
) -> hd.sr.ContentSequence:
    """The TID 1500 root container: language, device observer, procedure reported, image library, imaging
    measurements (when there are groups), qualitative evaluations (when there are any)."""
    root = hd.sr.ContainerContentItem(name=codes.cid7021.ImagingMeasurementReport, template_id="1500")
    content = hd.sr.ContentSequence()
    content.extend(hd.sr.LanguageOfContentItemAndDescendants(hd.sr.templates.DEFAULT_LANGUAGE))
    content.extend(_device_observer(context))
    content.append(
        hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported,
            value=procedure_reported(volume.datasets[0]),
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    described = [image for image in referenced_images if _describable(image)]
    if described:
        content.extend(hd.sr.ImageLibrary(described))
    if groups:
        measurements = hd.sr.ContainerContentItem(
            name=codes.DCM.ImagingMeasurements, relationship_type=_CONTAINS
        )
        measurements.ContentSequence = hd.sr.ContentSequence()
        for group in groups:
            measurements.ContentSequence.extend(group)
        content.append(measurements)
    if evaluations:
        container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=_CONTAINS)
        container.ContentSequence = hd.sr.ContentSequence(list(evaluations))
        content.append(container)
    root.ContentSequence = content
    return hd.sr.ContentSequence([root], is_root=True)


def _describable(image: Dataset) -> bool:
    """Whether highdicom can write ``image``'s Image Library entry (TID 1601); a projection radiograph
    needs Imager Pixel Spacing and Patient Orientation, which some lack (the entry is then left out)."""
    try:
        hd.sr.ImageLibraryEntryDescriptors(image)
    except (AttributeError, IndexError, ValueError) as exc:
        logger.info("image %s has no Image Library entry: %s", image.SOPInstanceUID, exc)
        return False
    return True


def _referenced_images(volume: Volume, groups: Sequence[MeasurementGroup]) -> list[Dataset]:
    """The source instances the groups' SCOORDs point at, in frame order (the Image Library's entries)."""
    referenced = set()
    for group in groups:
        region = (
            group.roi if isinstance(group, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) else None
        )
        if region is not None:
            referenced.add(str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
    return [d for d in source_instances(volume) if str(d.SOPInstanceUID) in referenced]


def _evidence(volume: Volume) -> list[Dataset]:
    """Metadata views of the source instances: highdicom copies the Patient and General Study modules from
    the first, and a source may lack their Type 2 attributes (a whole-slide image without Patient ID)."""
    return [metadata_view(dataset) for dataset in source_instances(volume)]


def report_entropy(
    result: ToolResult, algorithm_name: str, algorithm_version: str, question: str | None
) -> tuple:
    """What distinguishes one report on a series from another: algorithm, structures, box and class labels,
    the question; not the answer text, so a rerun of a job writes the same SR UIDs."""
    labels = sorted(result.masks)
    extra = []
    if result.boxes:
        extra.append("boxes:" + "\\".join(sorted({box.label for box in result.boxes})))
    if result.labels:
        extra.append("labels:" + "\\".join(sorted(result.labels)))
    if question:
        extra.append("question:" + question.strip())
    if result.text and not (result.masks or result.boxes or result.labels):
        extra.append("text")
    return (*result_entropy(algorithm_name, algorithm_version, labels), *extra)


def encode_measurement_report(
    volume: Volume,
    result: ToolResult,
    algorithm_name: str,
    algorithm_version: str,
    context: EncodingContext,
    *,
    seg: Dataset | None = None,
    question: str | None = None,
) -> Dataset:
    """A TID 1500 Measurement Report of ``result`` over ``volume`` (what goes where: the module docstring).

    ``seg`` is the SEG ``encode_seg`` made of ``result.masks``; it is needed when a mask has pixels, except
    over a whole-slide image whose SEG could not be built (its structures then get outline groups alone).
    ``question`` is the question a VQA or retrieval answer (``result.text``) answers. ``EncodeError`` when
    the result holds nothing to report, or its masks, boxes or labels do not fit the volume.
    """
    if result.status is not ToolStatus.OK:
        raise EncodeError(f"Invalid 'result' - its status is {result.status.value}, not ok: {result.error}")
    checked = checked_masks(volume, result.masks) if result.masks else {}
    labels = list(checked)
    with_pixels = [label for label in labels if checked[label].any()]
    segment_numbers = _segments_of(volume, seg, with_pixels)
    entropy = report_entropy(result, algorithm_name, algorithm_version, question)
    series_instance_uid, sop_instance_uid = output_uids(context, volume, OutputKind.SR, *entropy)
    algorithm = hd.sr.AlgorithmIdentification(
        name=long_string(algorithm_name), version=long_string(algorithm_version)
    )
    if with_pixels and seg is None:
        logger.info(
            "SR %s: no SEG of whole-slide image %s; structure outlines reference no segment",
            sop_instance_uid,
            source_instances(volume)[0].SOPInstanceUID,
        )
    groups: list[MeasurementGroup] = []
    for number, label in enumerate(labels, start=1):
        if label not in with_pixels:
            logger.info("SR %s: structure %d is empty; no measurement group", sop_instance_uid, number)
            continue
        groups += _structure_groups(
            volume,
            None if seg is None else (seg, segment_numbers[label]),
            label,
            checked[label],
            algorithm,
            tracking_uid(context, volume, label, algorithm_name, algorithm_version),
        )
    # Boxes that prompted a segmentation are not findings of their own: the structure's outline shows where
    # it is, and a group per box and slice floods the viewer (OHIF lists them all and asks to track them).
    boxes = [] if with_pixels else sorted(result.boxes, key=lambda b: (b.frame, b.label, tuple(b.xyxy)))
    for box in boxes:
        uid = derived_uid(
            context, volume, "box", box.label, box.frame, box.xyxy, algorithm_name, algorithm_version
        )
        groups.append(_box_group(volume, box, algorithm, uid))
    evaluations = _qualitative_evaluations(result, question)
    if not groups and not evaluations:
        raise EncodeError(
            "Invalid 'result' - it holds no structure with pixels, no box, no label and no text: nothing to report"
        )
    if not groups:
        uid = derived_uid(context, volume, "whole image", *entropy)
        groups.append(_whole_image_group(volume, result, question, algorithm, uid))
    seg_evidence = [seg] if seg is not None and with_pixels else []
    try:
        document = hd.sr.Comprehensive3DSR(
            evidence=[*_evidence(volume), *seg_evidence],
            content=_report_content(volume, context, groups, evaluations, _referenced_images(volume, groups)),
            series_instance_uid=series_instance_uid,
            series_number=series_number(context, OutputKind.SR),
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=context.manufacturer,
            institution_name=context.institution_name,
            is_complete=False,
            is_verified=False,
            series_description=long_string(f"AI results ({algorithm_name})"),
            manufacturer_model_name=context.model_name,
            software_versions=long_string(context.software_version),
            device_serial_number=context.node_ae_title.strip(),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodeError(f"cannot build an SR over series {volume.series_instance_uid}: {exc}") from exc
    if _uses_local_codes(document.ContentSequence):
        scheme = Dataset()
        scheme.CodingSchemeDesignator = LOCAL_SCHEME
        scheme.CodingSchemeName = LOCAL_SCHEME_NAME
        scheme.CodingSchemeResponsibleOrganization = long_string(context.manufacturer)
        document.CodingSchemeIdentificationSequence = [scheme]
    add_contributing_equipment(document, context, algorithm_name, algorithm_version)
    logger.info(
        "SR %s: %d measurement groups, %d qualitative evaluations over series %s%s",
        sop_instance_uid,
        len(groups),
        len(evaluations),
        volume.series_instance_uid,
        f", SEG {seg.SOPInstanceUID}" if seg_evidence else "",
    )
    return document


def encode_sr(
    volume: Volume,
    seg: Dataset,
    masks: Mapping[str, np.ndarray],
    algorithm_name: str,
    algorithm_version: str,
    context: EncodingContext,
) -> Dataset:
    """A TID 1500 Measurement Report of a segmentation (``masks`` over ``volume``), referencing ``seg``.

    ``EncodeError`` when every mask is empty (there is nothing to measure).
    """
    checked = checked_masks(volume, masks)
    if not any(mask.any() for mask in checked.values()):
        raise EncodeError("Invalid 'masks' value - every structure is empty, there is nothing to measure")
    result = ToolResult(status=ToolStatus.OK, masks=dict(masks))
    return encode_measurement_report(volume, result, algorithm_name, algorithm_version, context, seg=seg)
