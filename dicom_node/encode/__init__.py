"""DICOM encoders of tool results (DESIGN.md 3.5): SEG, Comprehensive 3D SR (TID 1500), Secondary Capture.

Every object joins the source's study in a new series, carries a Contributing Equipment item naming the
node and the algorithm, and has UIDs and a series number that depend only on configuration, the source
series and the result's algorithm and structures, so re-running a job writes the same objects.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from dicom_node.encode.codes import StructureCodes, procedure_reported, structure_codes
from dicom_node.encode.common import (
    EncodedObject,
    EncodingContext,
    OutputKind,
    add_contributing_equipment,
    output_uids,
    series_number,
)
from dicom_node.encode.sc import encode_sc
from dicom_node.encode.seg import encode_seg
from dicom_node.encode.sr import encode_sr
from dicom_node.errors import EncodeError

if TYPE_CHECKING:
    from dicom_node.load import Volume
    from tools.base import ToolResult

logger = logging.getLogger(__name__)

__all__ = [
    "EncodedObject",
    "EncodingContext",
    "OutputKind",
    "StructureCodes",
    "add_contributing_equipment",
    "encode_sc",
    "encode_seg",
    "encode_segmentation_results",
    "encode_sr",
    "output_uids",
    "procedure_reported",
    "series_number",
    "structure_codes",
]


def encode_segmentation_results(
    volume: Volume,
    result: ToolResult,
    algorithm_name: str,
    algorithm_version: str,
    context: EncodingContext,
) -> list[EncodedObject]:
    """SEG, SR (referencing that SEG) and SC of ``result`` over ``volume``, in that order.

    Masks that are all empty get no SR (there is nothing to measure); a result with boxes but no masks
    gets only the SC; one with neither raises ``EncodeError``.
    """
    if not result.masks and not result.boxes:
        raise EncodeError("Invalid 'result' - it holds no masks and no boxes, nothing to encode")
    objects = []
    if result.masks:
        seg = encode_seg(volume, result.masks, algorithm_name, algorithm_version, context)
        objects.append(EncodedObject(OutputKind.SEG, seg))
        if any(np.any(mask) for mask in result.masks.values()):
            sr = encode_sr(volume, seg, result.masks, algorithm_name, algorithm_version, context)
            objects.append(EncodedObject(OutputKind.SR, sr))
        else:
            logger.info("SEG %s: every segment is empty; no SR", seg.SOPInstanceUID)
    sc = encode_sc(volume, result.masks, result.boxes, algorithm_name, algorithm_version, context)
    objects.append(EncodedObject(OutputKind.SC, sc))
    return objects
