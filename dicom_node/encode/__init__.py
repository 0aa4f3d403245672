"""DICOM encoders of tool results (DESIGN.md 3.5): SEG, Comprehensive 3D SR (TID 1500), Secondary Capture.

``encode_results`` turns any tool result into the objects it needs; ``encode_seg``,
``encode_measurement_report`` (``encode_sr`` for a segmentation) and ``encode_sc`` make one object each.
Every object joins the source's study in a new series, carries a Contributing Equipment item naming the
node and the algorithm, and has UIDs and a series number that depend only on configuration, the source
series and the result's algorithm and structures, so re-running a job writes the same objects.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import numpy as np

from dicom_node.encode.codes import StructureCodes, procedure_reported, structure_codes
from dicom_node.encode.common import (
    EncodedObject,
    EncodingContext,
    OutputKind,
    add_contributing_equipment,
    is_tiled,
    output_uids,
    series_number,
)
from dicom_node.encode.sc import encode_sc
from dicom_node.encode.seg import SegmentationType, encode_seg, is_probability_map
from dicom_node.encode.sr import encode_measurement_report, encode_sr
from dicom_node.errors import EncodeError

if TYPE_CHECKING:
    from dicom_node.load import Volume
    from tools.base import ToolResult

logger = logging.getLogger(__name__)

__all__ = [
    "EncodedObject",
    "EncodingContext",
    "OutputKind",
    "SegmentationType",
    "StructureCodes",
    "add_contributing_equipment",
    "encode_measurement_report",
    "encode_results",
    "encode_sc",
    "encode_seg",
    "encode_segmentation_results",
    "encode_sr",
    "output_uids",
    "procedure_reported",
    "series_number",
    "structure_codes",
]


def _has_report_content(result: ToolResult, question: str | None) -> bool:
    return (
        any(
            np.any(np.asarray(mask) >= 0.5) if is_probability_map(mask) else np.any(mask)
            for mask in result.masks.values()
        )
        or bool(result.boxes)
        or bool(result.labels)
        or bool(result.text.strip())
        or bool(result.sources)
    )


def encode_results(
    volume: Volume,
    result: ToolResult,
    algorithm_name: str,
    algorithm_version: str,
    context: EncodingContext,
    *,
    question: str | None = None,
    segmentation_type: SegmentationType | str | None = None,
    omit_empty_frames: bool = False,
    max_fractional_value: int = 255,
    workers: int | Executor = 0,
) -> list[EncodedObject]:
    """Every object a tool result becomes, in the order they reference each other: SEG, SR, SC.

    * SEG when the result has masks (``segmentation_type``, ``omit_empty_frames``, ``max_fractional_value``
      and ``workers`` go to ``encode_seg``: BINARY by default, FRACTIONAL for probability maps);
    * SR (TID 1500) when it has something to report: a structure with pixels, a box, a label, text, a
      source (``question`` is what a VQA or retrieval answer answers);
    * SC key image when it has masks or boxes.

    A whole-slide source gets its SEG only where the slide carries the geometry a tiled SEG copies (logged
    otherwise); its SR then outlines the structures without referencing a SEG. ``EncodeError`` when the
    result holds nothing at all to encode.
    """
    if not (result.masks or _has_report_content(result, question)):
        raise EncodeError("Invalid 'result' - it holds no masks, boxes, labels or text, nothing to encode")
    objects = []
    seg = None
    tiled = any(is_tiled(dataset) for dataset in volume.datasets)
    if result.masks:
        try:
            seg = encode_seg(
                volume,
                result.masks,
                algorithm_name,
                algorithm_version,
                context,
                segmentation_type=segmentation_type,
                omit_empty_frames=omit_empty_frames,
                max_fractional_value=max_fractional_value,
                workers=workers,
            )
        except EncodeError as exc:
            if not tiled:
                raise
            logger.warning("series %s: no SEG of the whole-slide image: %s", volume.series_instance_uid, exc)
        else:
            objects.append(EncodedObject(OutputKind.SEG, seg))
    if _has_report_content(result, question):
        sr = encode_measurement_report(
            volume, result, algorithm_name, algorithm_version, context, seg=seg, question=question
        )
        objects.append(EncodedObject(OutputKind.SR, sr))
    elif seg is not None:
        logger.info("SEG %s: every segment is empty; no SR", seg.SOPInstanceUID)
    if result.masks or result.boxes:
        sc = encode_sc(volume, result.masks, result.boxes, algorithm_name, algorithm_version, context)
        objects.append(EncodedObject(OutputKind.SC, sc))
    return objects


def encode_segmentation_results(
    volume: Volume,
    result: ToolResult,
    algorithm_name: str,
    algorithm_version: str,
    context: EncodingContext,
) -> list[EncodedObject]:
    """SEG, SR (referencing that SEG) and SC of ``result`` over ``volume``, in that order (``encode_results``
    with the defaults: BINARY SEG, empty frames kept).

    Masks that are all empty get no SR (there is nothing to measure) unless the result also has boxes,
    labels or text; a result with boxes but no masks gets an SR of its boxes and the SC; one with nothing
    raises ``EncodeError``.
    """
    return encode_results(volume, result, algorithm_name, algorithm_version, context)
