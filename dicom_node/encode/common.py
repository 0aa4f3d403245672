"""What every encoder shares: the node's identity, deterministic UIDs and series numbers, colours.

Output UIDs depend only on the node's UID prefix, the source series (study, series and the sorted SOP
Instance UIDs) and what the caller passes as entropy (tool name, engine version), so re-running a job
produces the same objects and never duplicates them in the PACS (DESIGN.md 1 and 3.5).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from dicom_node.uids import deterministic_uid

if TYPE_CHECKING:
    from dicom_node.load import Volume

_UID_PREFIX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")
_LONG_STRING = 64
_FRAME_OF_REFERENCE_UID = Tag("FrameOfReferenceUID")
VL_WHOLE_SLIDE_MICROSCOPY_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
# Type 2 in the Patient and General Study modules of every image IOD: absent means empty.
_TYPE_2_PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_PIXEL_DATA_TAGS = {Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData")}

# Distinct colours, one per segment in segment order; the SEG, the SR viewer and the SC use the same.
SEGMENT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)


def _package_version() -> str:
    try:
        return importlib.metadata.version("medagent-node")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


class OutputKind(str, Enum):
    """The kinds of object the node writes; each goes into its own series."""

    SEG = "SEG"
    SR = "SR"
    SC = "SC"


_SERIES_NUMBER_OFFSET = {OutputKind.SEG: 1, OutputKind.SR: 2, OutputKind.SC: 3}


@dataclass(frozen=True)
class EncodingContext:
    """The node's identity as written into every output object."""

    uid_prefix: str
    series_number_base: int
    institution_name: str
    node_ae_title: str
    manufacturer: str = "MedAgent"
    model_name: str = "MedAgent Node"
    software_version: str = field(default_factory=_package_version)

    def __post_init__(self) -> None:
        if not _UID_PREFIX.match(self.uid_prefix) or len(self.uid_prefix) > 40:
            raise ValueError(
                f"Invalid 'uid_prefix' value '{self.uid_prefix}' - must be a dotted numeric UID root ending "
                "with '.', at most 40 characters"
            )
        if not 0 <= self.series_number_base <= 2**31 - 1000:
            raise ValueError(
                f"Invalid 'series_number_base' value {self.series_number_base} - must be 0 to {2**31 - 1000}"
            )
        if not self.node_ae_title.strip() or len(self.node_ae_title.strip()) > 16:
            raise ValueError(
                f"Invalid 'node_ae_title' value '{self.node_ae_title}' - must be 1 to 16 characters"
            )
        for name in ("institution_name", "manufacturer", "model_name", "software_version"):
            if len(getattr(self, name)) > _LONG_STRING:
                raise ValueError(
                    f"Invalid '{name}' value '{getattr(self, name)}' - must not exceed 64 characters"
                )

    @classmethod
    def from_settings(cls, settings: Any) -> EncodingContext:
        """Build the context from ``config.settings.Settings`` (its ``node`` section)."""
        node = settings.node
        return cls(
            uid_prefix=node.uid_prefix,
            series_number_base=node.series_number_base,
            institution_name=node.institution_name,
            node_ae_title=node.ae_title,
        )


@dataclass
class EncodedObject:
    """One DICOM object made by an encoder, ready to be written and sent."""

    kind: OutputKind
    dataset: Dataset


def frame_shape(volume: Volume) -> tuple[int, int, int]:
    """``(frames, rows, columns)`` of ``volume``: what a mask must be shaped like (colour samples excluded)."""
    frames, rows, columns = volume.array.shape[:3]
    return int(frames), int(rows), int(columns)


def frame_sources(volume: Volume) -> list[tuple[Dataset, int | None]]:
    """The source of each frame of ``volume``: ``(dataset, frame number)``, the number ``None`` for single-frame.

    Uses ``volume.frame_sources`` where the loader provides it (multi-frame sources), else one dataset per
    frame from ``volume.datasets``.
    """
    sources = getattr(volume, "frame_sources", None)
    if sources:
        return [(dataset, None if number is None else int(number)) for dataset, number in sources]
    return [(dataset, None) for dataset in volume.datasets]


def source_instances(volume: Volume) -> list[Dataset]:
    """The distinct source instances of ``volume``, in frame order."""
    seen: dict[str, Dataset] = {}
    for dataset, _ in frame_sources(volume):
        seen.setdefault(str(dataset.SOPInstanceUID), dataset)
    return list(seen.values())


def has_patient_geometry(dataset: Dataset) -> bool:
    """Whether ``dataset`` is placed in a patient frame of reference (Image Position/Orientation (Patient))."""
    if "FrameOfReferenceUID" not in dataset:
        return False
    if "ImagePositionPatient" in dataset and "ImageOrientationPatient" in dataset:
        return True
    shared = dataset.get("SharedFunctionalGroupsSequence")
    return bool(shared) and "PlaneOrientationSequence" in shared[0]


def is_tiled(dataset: Dataset) -> bool:
    """Whether ``dataset`` is a tiled whole-slide image (its frames are tiles of a Total Pixel Matrix)."""
    return "TotalPixelMatrixRows" in dataset and str(dataset.SOPClassUID) == VL_WHOLE_SLIDE_MICROSCOPY_IMAGE


def known_pixel_spacing(volume: Volume) -> tuple[float, float] | None:
    """``(row spacing, column spacing)`` in mm, or ``None`` where the source gives none or zero.

    Measurements in mm are only made with a known spacing (DESIGN.md 3.4: tools never guess it).
    """
    pixel_spacing = getattr(volume, "pixel_spacing", None)
    if pixel_spacing is None and volume.spacing is not None:
        pixel_spacing = volume.spacing[1:]
    if pixel_spacing is not None and all(value and value > 0 for value in pixel_spacing):
        return float(pixel_spacing[0]), float(pixel_spacing[1])
    return None


def knows_voxel_volume(volume: Volume) -> bool:
    """Whether ``volume.voxel_volume_ml`` is known: a slice distance and a pixel spacing."""
    return volume.spacing is not None and all(value and value > 0 for value in volume.spacing)


def is_colour(volume: Volume) -> bool:
    """Whether ``volume`` holds RGB frames ``[frame, row, column, 3]``."""
    return bool(getattr(volume, "is_color", False)) or volume.array.ndim == 4


def source_fingerprint(volume: Volume) -> str:
    """A hash of the source series' sorted SOP Instance UIDs: it changes when the series changes."""
    uids = sorted(str(d.SOPInstanceUID) for d in volume.datasets)
    return hashlib.sha256("\\".join(uids).encode("ascii")).hexdigest()


def derived_uid(context: EncodingContext, volume: Volume, *entropy: object) -> str:
    """A UID that depends only on the node prefix, the source series and ``entropy``."""
    return deterministic_uid(
        context.uid_prefix,
        volume.study_instance_uid,
        volume.series_instance_uid,
        source_fingerprint(volume),
        *entropy,
    )


def output_uids(
    context: EncodingContext, volume: Volume, kind: OutputKind | str, *entropy: object
) -> tuple[str, str]:
    """``(series_instance_uid, sop_instance_uid)`` of the ``kind`` object derived from ``volume``.

    ``entropy`` should name what made the result (tool name, engine version), so that different tools on
    the same series write different objects while the same tool rerun writes the same ones.
    """
    kind = OutputKind(kind)
    return (
        derived_uid(context, volume, kind.value, "series", *entropy),
        derived_uid(context, volume, kind.value, "instance", *entropy),
    )


def series_number(context: EncodingContext, kind: OutputKind | str) -> int:
    """The configured series number of ``kind``: base + 1 (SEG), + 2 (SR), + 3 (SC)."""
    return context.series_number_base + _SERIES_NUMBER_OFFSET[OutputKind(kind)]


def tracking_uid(context: EncodingContext, volume: Volume, label: str, *entropy: object) -> str:
    """The Tracking UID of one structure: shared by its SEG segment and its SR measurement groups."""
    return derived_uid(context, volume, "tracking", label, *entropy)


def segment_color(index: int) -> tuple[int, int, int]:
    """RGB colour of the segment at 0-based ``index`` in segment order."""
    return SEGMENT_COLORS[index % len(SEGMENT_COLORS)]


def long_string(value: str) -> str:
    """``value`` cut to the 64 characters a LO element may hold."""
    return value[:_LONG_STRING]


def add_contributing_equipment(
    dataset: Dataset, context: EncodingContext, algorithm_name: str, algorithm_version: str
) -> None:
    """Append the node's item to the Contributing Equipment Sequence (IHE AI Results).

    Purpose of Reference is (Newcode1, 99IHE, "Processing Algorithm"); Software Versions lists the node's
    version and the algorithm's name and version. The Contribution DateTime is the object's content date
    and time when it has them, so UIDs stay deterministic.
    """
    purpose = Dataset()
    purpose.CodeValue = "Newcode1"
    purpose.CodingSchemeDesignator = "99IHE"
    purpose.CodeMeaning = "Processing Algorithm"
    item = Dataset()
    item.Manufacturer = context.manufacturer
    item.InstitutionName = context.institution_name
    item.ManufacturerModelName = context.model_name
    item.StationName = context.node_ae_title.strip()
    item.SoftwareVersions = [
        long_string(context.software_version),
        long_string(f"{algorithm_name} {algorithm_version}".strip()),
    ]
    item.PurposeOfReferenceCodeSequence = [purpose]
    content_date = str(dataset.get("ContentDate", "") or "")
    if content_date:
        item.ContributionDateTime = content_date + str(dataset.get("ContentTime", "") or "")
    item.ContributionDescription = long_string(f"{algorithm_name} {algorithm_version}".strip())
    if "ContributingEquipmentSequence" in dataset:
        dataset.ContributingEquipmentSequence.append(item)
    else:
        dataset.ContributingEquipmentSequence = DicomSequence([item])


def metadata_view(dataset: Dataset, frame_of_reference_uid: str | None = None) -> Dataset:
    """A copy of ``dataset``'s public attributes without pixel data, for highdicom to read.

    Elements are copied (sequences deeply) and values shared: replacing an element of the view never
    changes the caller's dataset, and encoders never change a value in place. Type 2 patient and study
    attributes the source lacks (PatientID on a whole-slide image, say) are added empty, as the standard
    reads an absent Type 2 attribute. With ``frame_of_reference_uid`` the view carries that Frame of
    Reference UID instead of its own (used to give a series whose slices carry different FoR UIDs over one
    geometry a single frame of reference).
    """
    view = Dataset()
    for element in dataset:
        if element.tag.is_private or element.tag in _PIXEL_DATA_TAGS:
            continue
        view.add(copy.deepcopy(element) if element.VR == "SQ" else copy.copy(element))
    for keyword in _TYPE_2_PATIENT_AND_STUDY:
        if keyword not in view:
            setattr(view, keyword, None)
    if frame_of_reference_uid is not None:
        view[_FRAME_OF_REFERENCE_UID] = DataElement(_FRAME_OF_REFERENCE_UID, "UI", frame_of_reference_uid)
    if hasattr(dataset, "file_meta"):
        view.file_meta = dataset.file_meta
    return view
