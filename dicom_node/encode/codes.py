"""Coded concepts for structures and procedures (SNOMED CT, LOINC), chosen once for all encoders.

Segmentation categories and types follow CID 7150 / CID 7151; a structure label the table does not know
becomes category and type "Tissue" (SCT 85756007), its label kept as the Segment Label, so an unknown
prompt never stops encoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # 91723000
TISSUE = codes.SCT.Tissue  # 85756007
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure  # 49755003

VOLUME = codes.SCT.Volume  # 118565006
AREA = codes.SCT.Area  # 42798000
MEAN = codes.SCT.Mean  # 373098007
ATTENUATION_COEFFICIENT = codes.DCM.AttenuationCoefficient  # 112031
MILLILITER = Code("ml", "UCUM", "milliliter")
SQUARE_MILLIMETER = codes.UCUM.SquareMillimeter
HOUNSFIELD_UNIT = codes.UCUM.HounsfieldUnit
LEFT = codes.SCT.Left
RIGHT = codes.SCT.Right


@dataclass(frozen=True)
class StructureCodes:
    """How one structure is coded: category, type, an optional laterality modifier, whether it is known."""

    category: Code
    type: Code
    laterality: Code | None = None
    known: bool = True


_ANATOMY: dict[str, Code] = {
    "left lung": Code("44029006", "SCT", "Left lung"),
    "right lung": Code("3341006", "SCT", "Right lung"),
    "lung": codes.SCT.Lung,
    "body": codes.SCT.EntireBody,
    "heart": codes.SCT.Heart,
    "liver": codes.SCT.Liver,
    "spleen": codes.SCT.Spleen,
    "kidney": codes.SCT.Kidney,
    "pancreas": codes.SCT.Pancreas,
    "stomach": codes.SCT.Stomach,
    "aorta": codes.SCT.Aorta,
    "brain": codes.SCT.Brain,
    "gallbladder": codes.SCT.Gallbladder,
    "esophagus": codes.SCT.Esophagus,
    "trachea": codes.SCT.Trachea,
}
_TISSUE: dict[str, Code] = {
    "bone": codes.SCT.Bone,
    "muscle": codes.SCT.Muscle,
    "fat": codes.SCT.AdiposeTissue,
}
_ABNORMAL: dict[str, Code] = {
    "nodule": codes.SCT.Nodule,
    "mass": codes.SCT.Mass,
    "lesion": codes.SCT.Lesion,
    "tumor": codes.SCT.Neoplasm,
    "tumour": codes.SCT.Neoplasm,
}
_ALIASES = {
    "lungs": "lung",
    "both lungs": "lung",
    "entire body": "body",
    "kidneys": "kidney",
    "oesophagus": "esophagus",
}
_SIDES = {"left": LEFT, "right": RIGHT}


def normalise_label(label: str) -> str:
    """Lower case, single spaces: the form the code table and the encoders key on."""
    return " ".join(str(label).lower().split())


def _lookup(name: str) -> StructureCodes | None:
    name = _ALIASES.get(name, name)
    if name in _ANATOMY:
        return StructureCodes(ANATOMICAL_STRUCTURE, _ANATOMY[name])
    if name in _TISSUE:
        return StructureCodes(TISSUE, _TISSUE[name])
    if name in _ABNORMAL:
        return StructureCodes(MORPHOLOGICALLY_ABNORMAL_STRUCTURE, _ABNORMAL[name])
    return None


def structure_codes(label: str) -> StructureCodes:
    """Codes for a structure label (``"left lung"``, ``"lungs"``, ``"right kidney"``, anything else).

    A side the table has no own code for (``"left kidney"``) becomes the structure's code plus a
    laterality modifier (SCT 7771000 Left, 24028007 Right).
    """
    name = normalise_label(label)
    found = _lookup(name)
    if found is not None:
        return found
    side, _, rest = name.partition(" ")
    if side in _SIDES and rest:
        base = _lookup(rest)
        if base is not None:
            return StructureCodes(base.category, base.type, laterality=_SIDES[side])
    return StructureCodes(TISSUE, TISSUE, known=False)


def coded_item(code: Code) -> Dataset:
    """A Code Sequence item (Code Value, Coding Scheme Designator, Code Meaning)."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    if code.scheme_version:
        item.CodingSchemeVersion = code.scheme_version
    item.CodeMeaning = code.meaning
    return item


_CT_PROCEDURES = {
    "chest": Code("24627-2", "LN", "CT Chest"),
    "thorax": Code("24627-2", "LN", "CT Chest"),
    "lung": Code("24627-2", "LN", "CT Chest"),
    "head": Code("24725-4", "LN", "CT Head"),
}
_GENERIC_PROCEDURES = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,  # 25045-6
    "MR": codes.LN.MRIUnspecifiedBodyRegion,  # 25056-3
    "PT": codes.LN.PETUnspecifiedBodyRegion,  # 44136-0
    "NM": codes.LN.NMUnspecifiedBodyRegion,  # 49118-3
    "CR": codes.LN.XRUnspecifiedBodyRegion,  # 43468-8
    "DX": codes.LN.XRUnspecifiedBodyRegion,
    "US": Code("25061-3", "LN", "US Unspecified body region"),
}
IMAGING_PROCEDURE = codes.cid100.ImagingProcedure  # SCT 363679005


def procedure_reported(source: Dataset) -> Code:
    """The imaging procedure that produced ``source`` (never the algorithm), for TID 1500.

    CT of the chest or head by Body Part Examined or Study Description; otherwise the modality's
    "unspecified body region" LOINC code; otherwise SCT "Imaging procedure".
    """
    modality = str(source.get("Modality", "") or "").upper()
    if modality == "CT":
        words = " ".join(
            str(source.get(keyword, "") or "") for keyword in ("BodyPartExamined", "StudyDescription")
        ).lower()
        for word, code in _CT_PROCEDURES.items():
            if word in words:
                return code
    return _GENERIC_PROCEDURES.get(modality, IMAGING_PROCEDURE)


# TID 1500 report-level content: the Qualitative Evaluations container and what the node puts in it.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
FINDING = codes.DCM.Finding  # 121071
IMPRESSION = codes.DCM.Impression  # 121073
PROBABILITY = codes.DCM.Probability  # 122157
NO_UNITS = Code("1", "UCUM", "no units")

#: The node's own coding scheme, for concepts no public scheme has (a question put to the agent, its answer,
#: a cited source). Declared in the Coding Scheme Identification Sequence of every SR that uses it.
LOCAL_SCHEME = "99MEDAGENT"
LOCAL_SCHEME_NAME = "MedAgent Node local codes"
QUESTION = Code("MA0001", LOCAL_SCHEME, "Question")
ANSWER = Code("MA0002", LOCAL_SCHEME, "Answer")
CITATION = Code("MA0003", LOCAL_SCHEME, "Citation")
CLASSIFICATION_LABEL_PREFIX = "MAL"


def classification_code(label: str) -> Code:
    """The code of a classification label: its SNOMED CT code where the structure table knows it, else a code
    of the node's scheme whose value is a hash of the normalised label and whose meaning is the label."""
    structure = structure_codes(label)
    if structure.known and structure.laterality is None:
        return structure.type
    name = normalise_label(label)
    value = CLASSIFICATION_LABEL_PREFIX + hashlib.sha256(name.encode("utf-8")).hexdigest()[:12].upper()
    return Code(value, LOCAL_SCHEME, str(label).strip()[:64])
