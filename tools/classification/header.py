"""The ``DICOM header`` engine: image type and body region from what the header states, not from pixels.

A classical engine, named as such in every output. It reads Modality, BodyPartExamined, ImageType and the
free-text descriptions (StudyDescription, SeriesDescription, ProtocolName, ...) and maps them to
MMedAgent's image-type labels where one applies ("lung CT", "brain MRI", "chest X-ray", "bone X-ray",
"hematoxylin and eosin histopathology", ...), else to a plain modality label ("MRI", "obstetric
ultrasound", "histopathology"), plus a body-region label ("chest", "brain"). Every label it gives has
probability 1.0 because the header states it; what the header leaves open it does not guess.

Values arrive as strings; a multi-valued attribute (ImageType) may be written DICOM-style
(``ORIGINAL\\PRIMARY\\AXIAL``) or as pydicom prints it (``['ORIGINAL', 'PRIMARY', 'AXIAL']``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ENGINE_NAME = "DICOM header"
ENGINE_VERSION = "1.0"

#: free-text attributes a region or a stain may be named in, most specific first
DESCRIPTION_KEYWORDS = (
    "SeriesDescription",
    "ProtocolName",
    "StudyDescription",
    "RequestedProcedureDescription",
    "PerformedProcedureStepDescription",
)

#: BodyPartExamined defined terms (PS3.16 Annex L) and description words -> body-region label
_REGION_TERMS: dict[str, str] = {
    "BRAIN": "brain",
    "HEAD": "head",
    "KOPF": "head",
    "SKULL": "skull",
    "SCHAEDEL": "skull",
    "HEADNECK": "head and neck",
    "NECK": "neck",
    "THYROID": "thyroid",
    "CHEST": "chest",
    "THORAX": "chest",
    "LUNG": "chest",
    "LUNGS": "chest",
    "CXR": "chest",
    "CHESTABDOMEN": "chest and abdomen",
    "BREAST": "breast",
    "HEART": "heart",
    "CARDIAC": "heart",
    "ABDOMEN": "abdomen",
    "ABD": "abdomen",
    "LIVER": "liver",
    "KIDNEY": "kidney",
    "PANCREAS": "pancreas",
    "ABDOMENPELVIS": "abdomen and pelvis",
    "ABDPELVIS": "abdomen and pelvis",
    "PELVIS": "pelvis",
    "BECKEN": "pelvis",
    "CSPINE": "cervical spine",
    "TSPINE": "thoracic spine",
    "LSPINE": "lumbar spine",
    "SSPINE": "sacrum",
    "SPINE": "spine",
    "WHOLESPINE": "spine",
    "SHOULDER": "shoulder",
    "CLAVICLE": "clavicle",
    "HUMERUS": "arm",
    "ARM": "arm",
    "ELBOW": "elbow",
    "FOREARM": "forearm",
    "WRIST": "wrist",
    "HAND": "hand",
    "FINGER": "hand",
    "HIP": "hip",
    "FEMUR": "leg",
    "LEG": "leg",
    "KNEE": "knee",
    "TIBIA": "leg",
    "ANKLE": "ankle",
    "FOOT": "foot",
    "HEEL": "foot",
    "TOE": "foot",
    "EXTREMITY": "extremity",
    "RIB": "ribs",
    "RIBS": "ribs",
    "WHOLEBODY": "whole body",
}

#: two regions named together in a description read as one ("CT ABDOMEN PELVIS")
_REGION_PAIRS: dict[frozenset[str], str] = {
    frozenset({"abdomen", "pelvis"}): "abdomen and pelvis",
    frozenset({"chest", "abdomen"}): "chest and abdomen",
    frozenset({"head", "neck"}): "head and neck",
    frozenset({"head", "brain"}): "brain",
}

_CHEST = {"chest"}
_ABDOMEN = {"abdomen", "abdomen and pelvis", "liver", "kidney", "pancreas"}
_HEAD = {"brain", "head"}
_BONES = {
    "skull", "cervical spine", "thoracic spine", "lumbar spine", "sacrum", "spine", "shoulder", "clavicle",
    "arm", "elbow", "forearm", "wrist", "hand", "hip", "pelvis", "leg", "knee", "ankle", "foot", "extremity",
    "ribs",
}  # fmt: skip

_XRAY_MODALITIES = {"CR", "DX", "RG", "DR"}

#: modality label when no image-type label of MMedAgent's applies
_MODALITY_LABELS = {
    "CT": "CT",
    "MR": "MRI",
    "CR": "X-ray",
    "DX": "X-ray",
    "RG": "X-ray",
    "DR": "X-ray",
    "PX": "panoramic dental X-ray",
    "IO": "intra-oral X-ray",
    "MG": "mammography",
    "US": "ultrasound",
    "SM": "histopathology",
    "GM": "microscopy",
    "XA": "X-ray angiography",
    "RF": "fluoroscopy",
    "PT": "PET",
    "NM": "nuclear medicine",
    "ES": "endoscopy",
    "XC": "photograph",
    "OP": "ophthalmic photograph",
    "OPT": "optical coherence tomography",
}

#: ultrasound ImageType value 3 (PS3.3 C.8.5.6.1.1) -> (examination, body region or None)
_ULTRASOUND_EXAMS: dict[str, tuple[str, str | None]] = {
    "ABDOMINAL": ("abdominal", "abdomen"),
    "BREAST": ("breast", "breast"),
    "CHEST": ("chest", "chest"),
    "ENDOCAVITARY": ("endocavitary", None),
    "ENDORECTAL": ("endorectal", None),
    "ENDOVAGINAL": ("endovaginal", None),
    "EPICARDIAL": ("epicardial", "heart"),
    "FETAL HEART": ("fetal heart", None),
    "GYNECOLOGY": ("gynaecological", "pelvis"),
    "INTRAOPERATIVE": ("intra-operative", None),
    "INTRAVASCULAR": ("intravascular", None),
    "MUSCULOSKELETAL": ("musculoskeletal", None),
    "NEONATAL HEAD": ("neonatal head", "head"),
    "OB": ("obstetric", None),
    "OBSTETRICAL": ("obstetric", None),
    "OPHTHALMIC": ("ophthalmic", None),
    "PELVIC": ("pelvic", "pelvis"),
    "RETROPERITONEAL": ("retroperitoneal", "abdomen"),
    "SCROTAL": ("scrotal", None),
    "SMALL PARTS": ("small parts", None),
    "TEE": ("transoesophageal echocardiography", "heart"),
    "TRANSCRANIAL": ("transcranial", "head"),
    "TRANSESOPHAGEAL": ("transoesophageal echocardiography", "heart"),
    "TRANSRECTAL": ("transrectal", None),
    "TRANSTHORACIC": ("transthoracic echocardiography", "heart"),
    "TRANSVAGINAL": ("transvaginal", None),
    "VASCULAR": ("vascular", None),
}

_HE_STAIN = re.compile(r"\bH\s*[&+]\s*E\b|\bHE\b|HA?EMATOXYLIN|\bEOSIN", re.IGNORECASE)
_IHC_STAIN = re.compile(r"\bIHC\b|IMMUNOHISTO", re.IGNORECASE)

#: other names a planner may give the labels this engine states, casefolded -> the engine's label
_SYNONYMS = {
    "chest ct": "lung CT",
    "thorax ct": "lung CT",
    "ct chest": "lung CT",
    "abdominal ct": "abdomen CT",
    "ct abdomen": "abdomen CT",
    "brain mr": "brain MRI",
    "head mri": "brain MRI",
    "mri brain": "brain MRI",
    "chest radiograph": "chest X-ray",
    "chest xray": "chest X-ray",
    "cxr": "chest X-ray",
    "thorax": "chest",
    "mr": "MRI",
    "xray": "X-ray",
    "radiograph": "X-ray",
    "h&e histopathology": "hematoxylin and eosin histopathology",
    "ihc histopathology": "immunohistochemistry histopathology",
}


@dataclass(frozen=True)
class HeaderFacts:
    """What one series' header states: an image type and a body region (either may be None).

    ``evidence`` names the attributes each fact was read from ("BodyPartExamined CHEST"); ``notes`` says
    what the header leaves open. Neither quotes free text beyond the matched word.
    """

    image_type: str | None
    body_region: str | None
    evidence: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def labels(self) -> dict[str, float]:
        """The stated facts as labels, each with probability 1.0."""
        return {label: 1.0 for label in (self.image_type, self.body_region) if label}

    def sentence(self) -> str:
        """One line for the result text: the facts, where they came from and what stays open."""
        stated = "; ".join(self.labels()) or "nothing"
        text = f"From the DICOM header, not the pixels: {stated} ({', '.join(self.evidence)})."
        return " ".join([text, *self.notes])


def multi_values(value: str) -> list[str]:
    """The values of a multi-valued attribute written ``A\\B`` or ``['A', 'B']``, upper-cased."""
    parts = re.split(r"\\|,|\[|\]|'|\"", value)
    return [part.strip().upper() for part in parts if part.strip()]


def _words(text: str) -> list[str]:
    return [word for word in re.split(r"[^A-Z0-9]+", text.upper()) if word]


def _region_from_body_part(body_part: str) -> str | None:
    """The region a BodyPartExamined value names: a defined term, or a known word in a local value."""
    term = re.sub(r"[\s_-]+", "", body_part.upper())
    if term in _REGION_TERMS:
        return _REGION_TERMS[term]
    return _one_region({_REGION_TERMS[w] for w in _words(body_part) if w in _REGION_TERMS})


def _one_region(regions: set[str]) -> str | None:
    """One region from the set named together, or None when they do not read as one."""
    if len(regions) == 1:
        return next(iter(regions))
    return _REGION_PAIRS.get(frozenset(regions))


def _region_from_descriptions(metadata: Mapping[str, str]) -> tuple[str | None, list[str], list[str]]:
    """The region the descriptions agree on, with the evidence; a note when they name several."""
    found: dict[str, list[str]] = {}
    for keyword in DESCRIPTION_KEYWORDS:
        for word in _words(metadata.get(keyword, "")):
            if word in _REGION_TERMS:
                found.setdefault(_REGION_TERMS[word], []).append(f"{keyword} mentions {word}")
    if not found:
        return None, [], []
    region = _one_region(set(found))
    if region is None:
        return (
            None,
            [],
            [f"The descriptions name several regions ({', '.join(sorted(found))}); none is given."],
        )
    evidence = [item for items in found.values() for item in items[:1]]
    return region, evidence, []


def _stain(metadata: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """``"H&E"`` or ``"IHC"`` when the descriptions or specimen attributes name exactly one of them."""
    keywords = [k for k in metadata if k in DESCRIPTION_KEYWORDS or "Specimen" in k or "Stain" in k]
    he = [k for k in keywords if _HE_STAIN.search(metadata[k])]
    ihc = [k for k in keywords if _IHC_STAIN.search(metadata[k])]
    if he and not ihc:
        return "H&E", [f"{he[0]} names an H&E stain"]
    if ihc and not he:
        return "IHC", [f"{ihc[0]} names immunohistochemistry"]
    return None, []


def _image_type(
    modality: str, region: str | None, image_type_values: Sequence[str], metadata: Mapping[str, str]
) -> tuple[str | None, str | None, list[str], list[str]]:
    """(image type, region from the image type, evidence, notes) for one modality.

    MMedAgent's labels are used where modality and region pin one; otherwise the modality's own label.
    """
    if modality == "CT" and "LOCALIZER" in image_type_values:
        return "CT localizer", None, ["ImageType LOCALIZER"], []
    if modality == "CT" and region in _CHEST:
        return "lung CT", None, [], []
    if modality == "CT" and region in _ABDOMEN:
        return "abdomen CT", None, [], []
    if modality == "MR" and region in _HEAD:
        return "brain MRI", None, [], []
    if modality in _XRAY_MODALITIES and region in _CHEST:
        return "chest X-ray", None, [], []
    if modality in _XRAY_MODALITIES and region in _BONES:
        return "bone X-ray", None, [], []
    if modality == "US" and len(image_type_values) > 2 and image_type_values[2] in _ULTRASOUND_EXAMS:
        exam, exam_region = _ULTRASOUND_EXAMS[image_type_values[2]]
        return f"{exam} ultrasound", exam_region, [f"ImageType {image_type_values[2]}"], []
    if modality == "SM":
        stain, evidence = _stain(metadata)
        if stain == "H&E":
            return "hematoxylin and eosin histopathology", None, evidence, []
        if stain == "IHC":
            return "immunohistochemistry histopathology", None, evidence, []
        note = "The header does not name the stain, so H&E and immunohistochemistry cannot be told apart."
        return "histopathology", None, [], [note]
    return _MODALITY_LABELS.get(modality), None, [], []


def read_header(metadata: Mapping[str, str], modality: str = "", body_part: str = "") -> HeaderFacts:
    """The image type and body region one series' header states.

    ``modality`` and ``body_part`` stand in for Modality and BodyPartExamined when ``metadata`` lacks
    them (a ToolInput carries both).
    """
    modality = (metadata.get("Modality") or modality).strip().upper()
    body_part_value = (metadata.get("BodyPartExamined") or body_part).strip()
    evidence = [f"Modality {modality}"] if modality else []
    notes: list[str] = []
    region = _region_from_body_part(body_part_value) if body_part_value else None
    if region:
        evidence.append(f"BodyPartExamined {body_part_value.upper()}")
    else:
        if body_part_value:
            notes.append(f"BodyPartExamined '{body_part_value}' is not a body part this engine knows.")
        region, description_evidence, description_notes = _region_from_descriptions(metadata)
        evidence += description_evidence
        notes += description_notes
    image_type_values = multi_values(metadata.get("ImageType", ""))
    image_type, exam_region, type_evidence, type_notes = _image_type(
        modality, region, image_type_values, metadata
    )
    evidence += type_evidence
    notes += type_notes
    view = metadata.get("ViewPosition", "").strip()
    if view and modality in _XRAY_MODALITIES | {"MG"}:
        notes.append(f"The view is {view.upper()}.")
    if region is None and exam_region is not None:
        region = exam_region
    return HeaderFacts(image_type, region, tuple(evidence), tuple(notes))


def match_candidates(facts: HeaderFacts, candidates: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    """``({candidate: 1.0}, undecided)``: the candidates the header confirms, in the planner's words,
    and those it can neither confirm nor rule out."""
    stated = {label.casefold(): label for label in facts.labels()}
    confirmed: dict[str, float] = {}
    undecided: list[str] = []
    for candidate in candidates:
        key = candidate.casefold()
        key = _SYNONYMS.get(key, key).casefold()
        if key in stated:
            confirmed[candidate] = 1.0
        else:
            undecided.append(candidate)
    return confirmed, undecided
