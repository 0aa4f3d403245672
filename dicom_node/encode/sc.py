"""Secondary Capture key image: one source slice, windowed, with the result drawn over it in colour.

For viewers without SEG or SR support. The key slice is the one where the masks together cover the most
pixels (without masks: the one with the largest total box area). Masks are filled semi-transparently and
outlined in their segment colours (the SEG's colours); boxes on the key slice are drawn as rectangles; a
legend names the structures. No patient or study text is burned in (Burned In Annotation NO).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from scipy import ndimage

from dicom_node.encode.codes import coded_item
from dicom_node.encode.common import (
    EncodingContext,
    OutputKind,
    add_contributing_equipment,
    long_string,
    output_uids,
    segment_color,
    series_number,
)
from dicom_node.encode.seg import checked_masks, result_entropy
from dicom_node.errors import EncodeError

if TYPE_CHECKING:
    from dicom_node.load import Volume
    from tools.base import Box

logger = logging.getLogger(__name__)

LUNG_WINDOW = (-600.0, 1500.0)
FILL_OPACITY = 0.35
_ORIENTATION_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))
_SERIES_LEVEL = ("Laterality", "BodyPartExamined")


def key_slice_of_result(masks: Mapping[str, np.ndarray], boxes: Sequence[Box], slices: int) -> int:
    """The slice where the masks together cover most pixels; without masks, the one with most box area."""
    if masks:
        area = sum(m.reshape(m.shape[0], -1).sum(axis=1) for m in masks.values())
        if np.any(area):
            return int(np.argmax(area))
    box_area = np.zeros(slices)
    for box in boxes:
        if 0 <= box.frame < slices:
            x0, y0, x1, y1 = box.xyxy
            box_area[box.frame] += (x1 - x0 + 1) * (y1 - y0 + 1)
    return int(np.argmax(box_area))


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        return float(value[0]) if len(value) else None
    return float(value)  # type: ignore[arg-type]


def display_window(volume: Volume, labels: Sequence[str], index: int) -> tuple[float, float]:
    """``(center, width)``: the lung window for CT lungs, else the source's first window, else min/max."""
    if volume.modality.upper() == "CT" and any("lung" in label.lower() for label in labels):
        return LUNG_WINDOW
    source = volume.datasets[index]
    center, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        return center, width
    image = volume.array[index]
    low, high = float(image.min()), float(image.max())
    return (low + high) / 2.0, max(high - low, 1.0)


def render_grey(volume: Volume, index: int, window: tuple[float, float]) -> np.ndarray:
    """The slice as 8-bit grey through a linear window; MONOCHROME1 inverted so it looks as on a viewer."""
    center, width = window
    image = volume.array[index].astype(np.float64)
    grey = np.clip((image - (center - width / 2.0)) / width, 0.0, 1.0) * 255.0
    if str(volume.datasets[index].get("PhotometricInterpretation", "")) == "MONOCHROME1":
        grey = 255.0 - grey
    return np.round(grey).astype(np.uint8)


def _draw_masks(
    rgb: np.ndarray, masks: Mapping[str, np.ndarray], colors: Mapping[str, tuple[int, int, int]]
) -> None:
    thickness = 2 if min(rgb.shape[:2]) >= 384 else 1
    for label, mask in masks.items():
        if not mask.any():
            continue
        color = np.array(colors[label], dtype=np.float64)
        rgb[mask] = (1.0 - FILL_OPACITY) * rgb[mask] + FILL_OPACITY * color
        edge = mask & ~ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
        rgb[edge] = color


def _draw_boxes_and_legend(
    image: Image.Image, boxes: Sequence[Box], colors: Mapping[str, tuple[int, int, int]]
) -> None:
    draw = ImageDraw.Draw(image)
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box.xyxy)
        draw.rectangle((x0, y0, x1, y1), outline=colors[box.label], width=2)
    if not colors:
        return
    font = ImageFont.load_default()
    swatch, margin = 10, 4
    heights = [draw.textbbox((0, 0), label, font=font)[3] for label in colors]
    line = max(max(heights), swatch) + margin
    width = max(draw.textbbox((0, 0), label, font=font)[2] for label in colors) + swatch + 3 * margin
    draw.rectangle((0, 0, width + margin, line * len(colors) + margin), fill=(0, 0, 0))
    for row, (label, color) in enumerate(colors.items()):
        top = margin + row * line
        draw.rectangle((margin, top, margin + swatch, top + swatch), fill=color)
        draw.text((2 * margin + swatch, top), label, fill=(255, 255, 255), font=font)


def render_key_image(
    volume: Volume, masks: Mapping[str, np.ndarray], boxes: Sequence[Box], index: int
) -> np.ndarray:
    """RGB uint8 ``[row, column, 3]`` of slice ``index`` with masks, boxes on that slice and a legend."""
    labels = list(masks)
    colors = {label: segment_color(number) for number, label in enumerate(labels)}
    for box in boxes:
        colors.setdefault(box.label, segment_color(len(colors)))
    grey = render_grey(volume, index, display_window(volume, labels + [b.label for b in boxes], index))
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float64)
    _draw_masks(rgb, {label: mask[index] for label, mask in masks.items()}, colors)
    image = Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB")
    _draw_boxes_and_legend(image, [b for b in boxes if b.frame == index], colors)
    return np.asarray(image, dtype=np.uint8).copy()


def patient_orientation(row_direction: np.ndarray, column_direction: np.ndarray) -> tuple[str, str]:
    """Patient Orientation (0020,0020) letters of the row and column directions (LPS), e.g. ``("L", "P")``."""

    def letters(direction: np.ndarray) -> str:
        order = np.argsort(-np.abs(direction))
        return "".join(
            _ORIENTATION_LETTERS[axis][int(direction[axis] > 0)]
            for axis in order
            if abs(direction[axis]) > 1e-3
        )

    return letters(np.asarray(row_direction, float)), letters(np.asarray(column_direction, float))


def _empty_to_none(value: object) -> object:
    return value if value not in (None, "") else None


def encode_sc(
    volume: Volume,
    masks: Mapping[str, np.ndarray],
    boxes: Sequence[Box],
    algorithm_name: str,
    algorithm_version: str,
    context: EncodingContext,
) -> Dataset:
    """An RGB Secondary Capture of the key slice with the result drawn over it.

    Patient and study modules are copied in full from the key slice's source, Laterality and Body Part
    Examined too; the image references its source slice (Source Image Sequence).
    """
    if volume.array.ndim != 3:
        raise EncodeError(f"Invalid volume shape {volume.array.shape} - a key image needs grey slices")
    checked = checked_masks(volume, masks) if masks else {}
    if not checked and not boxes:
        raise EncodeError("Invalid result - a key image needs at least one mask or box")
    labels = list(checked) or sorted({box.label for box in boxes})
    index = key_slice_of_result(checked, boxes, volume.array.shape[0])
    pixels = render_key_image(volume, checked, sorted(boxes, key=lambda b: b.label), index)
    source = volume.datasets[index]
    entropy = result_entropy(algorithm_name, algorithm_version, labels)
    series_instance_uid, sop_instance_uid = output_uids(context, volume, OutputKind.SC, *entropy)
    _, row_spacing, column_spacing = volume.spacing
    orientation = patient_orientation(volume.row_direction, volume.column_direction)
    try:
        image = hd.sc.SCImage(
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            study_instance_uid=volume.study_instance_uid,
            series_instance_uid=series_instance_uid,
            series_number=series_number(context, OutputKind.SC),
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=context.manufacturer,
            patient_id=_empty_to_none(source.get("PatientID")),
            patient_name=_empty_to_none(source.get("PatientName")),
            patient_birth_date=_empty_to_none(source.get("PatientBirthDate")),
            patient_sex=_empty_to_none(source.get("PatientSex")),
            accession_number=_empty_to_none(source.get("AccessionNumber")),
            study_id=_empty_to_none(source.get("StudyID")),
            study_date=_empty_to_none(source.get("StudyDate")),
            study_time=_empty_to_none(source.get("StudyTime")),
            referring_physician_name=_empty_to_none(source.get("ReferringPhysicianName")),
            pixel_spacing=(row_spacing, column_spacing),
            patient_orientation=(orientation[0][0], orientation[1][0]),
            series_description=long_string(f"AI key image ({algorithm_name})"),
            manufacturer_model_name=context.model_name,
            software_versions=long_string(context.software_version),
            device_serial_number=context.node_ae_title.strip(),
            institution_name=context.institution_name,
            specific_character_set=_empty_to_none(source.get("SpecificCharacterSet")),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise EncodeError(
            f"cannot build a key image over series {volume.series_instance_uid}: {exc}"
        ) from exc
    image.PatientOrientation = list(orientation)  # highdicom takes one letter per direction; oblique has more
    image.copy_patient_and_study_information(source)
    for keyword in _SERIES_LEVEL:
        if source.get(keyword):
            setattr(image, keyword, source.get(keyword))
    if "Laterality" not in image and not source.get("BodyPartExamined") and "ImageLaterality" not in source:
        image.Laterality = None  # Type 2C: the body part is unknown, so it may be paired; laterality unknown
    image.ConversionType = "WSD"
    image.BurnedInAnnotation = "NO"
    image.DerivationDescription = long_string(f"Key slice rendered with {algorithm_name} results")
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [coded_item(codes.DCM.SourceImageForImageProcessingOperation)]
    image.SourceImageSequence = [reference]
    add_contributing_equipment(image, context, algorithm_name, algorithm_version)
    logger.info("SC %s: key slice %d of series %s", sop_instance_uid, index, volume.series_instance_uid)
    return image
