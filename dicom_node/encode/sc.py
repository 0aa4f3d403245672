"""Secondary Capture key image: one source frame, as a viewer shows it, with the result drawn over it.

For viewers without SEG or SR support. The key frame is the one where the masks together cover the most
pixels (without masks: the one with the largest total box area). Grey sources are shown through the
source's window (Window Center/Width; the lung window for CT lungs), MONOCHROME1 inverted; colour sources
(RGB, YBR, PALETTE COLOR) in their colours. Masks are filled semi-transparently and outlined in their
segment colours (the SEG's colours); boxes on the key frame are drawn as rectangles; a legend names the
structures.

Burned In Annotation: its definition (PS3.3 C.7.6.1.1.1 via the SC Image module) asks whether the image
holds enough burned-in text to identify the patient and the date the image was acquired. The legend
holds structure names only, so it is "NO", unless the copied source pixels may identify the patient: the
source says "YES", or says nothing and is an ultrasound (or another modality whose images usually carry
burned-in text; the ultrasound test images do). That annotations are burned in is recorded instead in Image Type
DERIVED\\SECONDARY, Image Comments "AI overlay burned in", the Derivation Description and the Source Image
Sequence.
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
from pydicom.pixels import apply_color_lut
from pydicom.sr.codedict import codes
from scipy import ndimage

from dicom_node.encode.codes import coded_item
from dicom_node.encode.common import (
    EncodingContext,
    OutputKind,
    add_contributing_equipment,
    frame_shape,
    frame_sources,
    is_colour,
    known_pixel_spacing,
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
OVERLAY_COMMENT = "AI overlay burned in"
_ORIENTATION_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))
_SERIES_LEVEL = ("Laterality", "BodyPartExamined")
_BURNED_IN_MODALITIES = ("US", "ES", "XC", "GM", "OT", "SC")
_COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


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


def _frame_window(dataset: Dataset) -> tuple[float | None, float | None]:
    center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    if center is None and "SharedFunctionalGroupsSequence" in dataset:
        shared = dataset.SharedFunctionalGroupsSequence[0]
        if "FrameVOILUTSequence" in shared:
            voi = shared.FrameVOILUTSequence[0]
            center, width = _first(voi.get("WindowCenter")), _first(voi.get("WindowWidth"))
    return center, width


def display_window(volume: Volume, labels: Sequence[str], index: int) -> tuple[float, float]:
    """``(center, width)``: the lung window for CT lungs, else the frame's own window (Window Center/Width,
    per-frame or shared Frame VOI LUT), else the volume's, else the frame's value range."""
    if volume.modality.upper() == "CT" and any("lung" in label.lower() for label in labels):
        return LUNG_WINDOW
    center, width = _frame_window(frame_sources(volume)[index][0])
    if center is not None and width is not None and width > 0:
        return center, width
    if getattr(volume, "window", None) is not None:
        return volume.window  # type: ignore[attr-defined, return-value]
    image = volume.array[index]
    low, high = float(image.min()), float(image.max())
    return (low + high) / 2.0, max(high - low, 1.0)


def render_grey(volume: Volume, index: int, window: tuple[float, float]) -> np.ndarray:
    """The slice as 8-bit grey through a linear window; MONOCHROME1 inverted so it looks as on a viewer."""
    center, width = window
    image = volume.array[index].astype(np.float64)
    grey = np.clip((image - (center - width / 2.0)) / width, 0.0, 1.0) * 255.0
    if is_inverted(volume, index):
        grey = 255.0 - grey
    return np.round(grey).astype(np.uint8)


def is_inverted(volume: Volume, index: int) -> bool:
    """Whether high values of frame ``index`` show dark (MONOCHROME1): the loader's ``inverted``, else the
    source's Photometric Interpretation."""
    inverted = getattr(volume, "inverted", None)
    if inverted is not None:
        return bool(inverted)
    return str(frame_sources(volume)[index][0].get("PhotometricInterpretation", "")) == "MONOCHROME1"


def shows_colour(volume: Volume, index: int) -> bool:
    """Whether frame ``index`` is a colour image (a colour array, or a colour source behind a grey one)."""
    if is_colour(volume):
        return True
    dataset = frame_sources(volume)[index][0]
    return str(dataset.get("PhotometricInterpretation", "")) in _COLOUR_PHOTOMETRICS


def render_colour(volume: Volume, index: int) -> np.ndarray:
    """Frame ``index`` as 8-bit RGB: the volume's colour array, or the source frame decoded to RGB (palette
    lookup tables applied, YBR converted)."""
    if is_colour(volume):
        rgb = np.asarray(volume.array[index], dtype=np.float64)
        if rgb.max(initial=0.0) <= 1.0 and rgb.dtype.kind == "f" and volume.array.dtype.kind == "f":
            rgb = rgb * 255.0
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    dataset, frame_number = frame_sources(volume)[index]
    pixels = dataset.pixel_array
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[(frame_number or 1) - 1]
    if str(dataset.PhotometricInterpretation) == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
        if pixels.dtype.itemsize > 1:
            pixels = pixels / 257.0
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


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


def _legend_font(image: Image.Image) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font, larger on large images (a 2000-pixel radiograph) so the legend stays legible."""
    size = max(11, round(min(image.size) / 45))
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, TypeError):
        return ImageFont.load_default()


def _draw_boxes_and_legend(
    image: Image.Image, boxes: Sequence[Box], colors: Mapping[str, tuple[int, int, int]]
) -> None:
    draw = ImageDraw.Draw(image)
    width_of_line = 2 if min(image.size) >= 384 else 1
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box.xyxy)
        draw.rectangle((x0, y0, x1, y1), outline=colors[box.label], width=width_of_line)
    if not colors:
        return
    font = _legend_font(image)
    swatch = max(10, round(min(image.size) / 50))
    margin = 4
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
    """RGB uint8 ``[row, column, 3]`` of frame ``index`` with masks, boxes on that frame and a legend."""
    labels = list(masks)
    colors = {label: segment_color(number) for number, label in enumerate(labels)}
    for box in boxes:
        colors.setdefault(box.label, segment_color(len(colors)))
    if shows_colour(volume, index):
        rgb = render_colour(volume, index).astype(np.float64)
    else:
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


def _orientation_of(volume: Volume, source: Dataset) -> list[str] | None:
    """The key image's Patient Orientation: from the volume's directions when the source is placed in the
    patient (Image Orientation (Patient)), else the source's own Patient Orientation, else unknown."""
    placed = "ImageOrientationPatient" in source or (
        "SharedFunctionalGroupsSequence" in source
        and "PlaneOrientationSequence" in source.SharedFunctionalGroupsSequence[0]
    )
    if placed:
        row, column = patient_orientation(volume.row_direction, volume.column_direction)
        if row and column:
            return [row, column]
    if source.get("PatientOrientation"):
        return list(source.PatientOrientation)
    return None


def burned_in_annotation(source: Dataset) -> str:
    """Burned In Annotation of a key image rendered from ``source`` (see the module docstring): the legend
    identifies no one, so "NO" unless the copied source pixels may: the source says "YES", or it says nothing
    and is of a modality whose images usually carry burned-in patient text (ultrasound, endoscopy,
    photographs, secondary captures)."""
    stated = str(source.get("BurnedInAnnotation", "") or "").upper()
    if stated in ("YES", "NO"):
        return stated
    return "YES" if str(source.get("Modality", "")).upper() in _BURNED_IN_MODALITIES else "NO"


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
    """An RGB Secondary Capture of the key frame with the result drawn over it.

    Patient and study modules are copied in full from the key frame's source, Laterality and Body Part
    Examined too; the image references its source frame (Source Image Sequence). Probability maps are drawn
    where they are >= 0.5.
    """
    if volume.array.ndim not in (3, 4):
        raise EncodeError(
            f"Invalid volume shape {volume.array.shape} - a key image needs [frame, row, column]"
        )
    frames = frame_sources(volume)
    checked = checked_masks(volume, masks) if masks else {}
    if not checked and not boxes:
        raise EncodeError("Invalid result - a key image needs at least one mask or box")
    labels = list(checked) or sorted({box.label for box in boxes})
    index = key_slice_of_result(checked, boxes, frame_shape(volume)[0])
    pixels = render_key_image(volume, checked, sorted(boxes, key=lambda b: b.label), index)
    source, frame_number = frames[index]
    entropy = result_entropy(algorithm_name, algorithm_version, labels)
    series_instance_uid, sop_instance_uid = output_uids(context, volume, OutputKind.SC, *entropy)
    spacing = known_pixel_spacing(volume)
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
            pixel_spacing=spacing,
            patient_orientation=("L", "P"),  # replaced below: highdicom takes one letter per direction
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
    image.PatientOrientation = _orientation_of(volume, source)
    image.copy_patient_and_study_information(source)
    for keyword in _SERIES_LEVEL:
        if source.get(keyword):
            setattr(image, keyword, source.get(keyword))
    if "Laterality" not in image and not source.get("BodyPartExamined") and "ImageLaterality" not in source:
        image.Laterality = None  # Type 2C: the body part is unknown, so it may be paired; laterality unknown
    image.ConversionType = "WSD"
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.BurnedInAnnotation = burned_in_annotation(source)
    image.ImageComments = OVERLAY_COMMENT
    image.DerivationDescription = long_string(f"Key image rendered with {algorithm_name} results")
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_number is not None:
        reference.ReferencedFrameNumber = frame_number
    reference.PurposeOfReferenceCodeSequence = [coded_item(codes.DCM.SourceImageForImageProcessingOperation)]
    image.SourceImageSequence = [reference]
    add_contributing_equipment(image, context, algorithm_name, algorithm_version)
    logger.info("SC %s: key frame %d of series %s", sop_instance_uid, index, volume.series_instance_uid)
    return image
