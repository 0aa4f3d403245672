"""Instruction-tuning data for the LLM planner, in MMedAgent's conversation format, and evaluation requests.

``generate(split, count, seed)`` writes requests for all seven tasks (grounding, segmentation,
grounded_segmentation, classification, report_generation, retrieval, vqa) on CT, MR, CR/DX, US and
pathology (SM), many structures and findings, in English, French, German and Spanish, short and misspelled
as well as polite and long, requests that need two tools, and requests that need no tool or a question
back. Each request becomes one conversation: the user turn is the planner's prompt (``llm.user_prompt``:
the tools that can run, the study line, the request) and the assistant turn the plan in MMedAgent's text
format (``Plan.to_mmedagent_text``), as in MMedAgent's instruction data::

    {"id": ..., "conversations": [{"from": "human", "value": <prompt>}, {"from": "gpt", "value": <plan>}],
     "instruction", "modality", "body_part", "expected_tools", "expected_prompts", "family", "language", ...}

Phrasings come in template families: a sentence frame with a few variants (``PHRASINGS``, and the
``CONNECTORS`` that join two requests); every family belongs to one split (``family_splits``), so the test
split holds sentence frames the model never saw (``TRAINING_PHRASINGS``, frames added later, are train
only, leave the other families' splits as they were, and are drawn only when asked: ``--extra-frames``).
The words the frames are filled with are shared vocabulary: the keywords of each task and language
(``KEYWORDS``: "segment", "outline", "Befund"...), the structures, topics and label sets, and the clauses of
multi-tool requests. Test requests whose text also occurs in training are dropped.

With ``frame_dropout`` (``medagent planner train --frame-dropout``, 0 by default) that share of training
requests lose a word or two of their sentence frame (``drop_frame_words``: never a slot, a keyword or a
negation), so that the model learns to read the keywords and the structures, not the exact frames it saw;
val and test requests always keep their frames whole.

Training studies are offered the tools the registry would offer on their modality, with some tools taken
away or added at random, so that the model learns to read the tool list rather than the modality. Eval
requests (``eval_item``) carry only what ``medagent planner eval`` reads: ``{"id", "instruction",
"modality", "body_part", "expected_tools", "expected_prompts"}``; their expected tools are those the
registry offers for the modality.

``new_tool_draws`` builds the requests of one more tool from its card and example requests (the "pseudo
tool" experiment of MMedAgent), to be mixed with replayed requests of the old tools (``with_tool_offered``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_core.planner.llm import plan_value, study_line, user_prompt
from agent_core.protocol import Action, Plan
from tools.base import ToolCard
from tools.prompts import normalise_prompts

SPLITS = ("train", "val", "test")
LANGUAGES = ("en", "fr", "de", "es")
LANGUAGE_WEIGHTS = {"en": 0.49, "fr": 0.17, "de": 0.17, "es": 0.17}
MODALITY_WEIGHTS = {"CT": 0.28, "MR": 0.2, "CR": 0.1, "DX": 0.08, "US": 0.13, "SM": 0.13, "": 0.08}
#: the canonical tools of the seven tasks
TASKS = (
    "grounding",
    "segmentation",
    "grounded_segmentation",
    "classification",
    "report_generation",
    "retrieval",
    "vqa",
)

# --------------------------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Structure:
    """An anatomical structure or finding a grounding tool is asked for: its canonical (English) prompt,
    other English words for it, and its name with article in French, German and Spanish."""

    name: str
    modalities: tuple[str, ...]
    body_part: str
    synonyms: tuple[str, ...] = ()
    fr: str = ""
    de: str = ""
    es: str = ""

    def surface(self, language: str, rng: random.Random) -> str:
        if language == "en":
            return rng.choice((self.name, self.name, *self.synonyms))
        return getattr(self, language) or self.name


_CT, _MR, _XR, _US, _SM = ("CT",), ("MR",), ("CR", "DX"), ("US",), ("SM",)
STRUCTURES = (
    Structure("liver", _CT + _MR + _US, "ABDOMEN", ("hepatic parenchyma",), "le foie", "die Leber", "el hígado"),
    Structure("spleen", _CT + _MR, "ABDOMEN", (), "la rate", "die Milz", "el bazo"),
    Structure("pancreas", _CT + _MR, "ABDOMEN", (), "le pancréas", "das Pankreas", "el páncreas"),
    Structure("gallbladder", _CT + _US, "ABDOMEN", ("gall bladder",), "la vésicule biliaire", "die Gallenblase", "la vesícula biliar"),
    Structure("stomach", _CT, "ABDOMEN", (), "l'estomac", "den Magen", "el estómago"),
    Structure("left kidney", _CT + _MR, "ABDOMEN", ("left renal",), "le rein gauche", "die linke Niere", "el riñón izquierdo"),
    Structure("right kidney", _CT + _MR, "ABDOMEN", (), "le rein droit", "die rechte Niere", "el riñón derecho"),
    Structure("kidneys", _CT + _MR + _US, "ABDOMEN", ("both kidneys",), "les reins", "die Nieren", "los riñones"),
    Structure("aorta", _CT + _MR, "CHEST", ("aortic lumen",), "l'aorte", "die Aorta", "la aorta"),
    Structure("urinary bladder", _CT + _MR + _US, "PELVIS", ("bladder",), "la vessie", "die Harnblase", "la vejiga"),
    Structure("left lung", _CT + _XR, "CHEST", ("left lung field",), "le poumon gauche", "die linke Lunge", "el pulmón izquierdo"),
    Structure("right lung", _CT + _XR, "CHEST", ("right lung field",), "le poumon droit", "die rechte Lunge", "el pulmón derecho"),
    Structure("lungs", _CT + _XR, "CHEST", ("both lungs", "lung fields"), "les poumons", "die Lungen", "los pulmones"),
    Structure("heart", _CT + _XR + _MR, "CHEST", ("cardiac silhouette",), "le cœur", "das Herz", "el corazón"),
    Structure("esophagus", _CT, "CHEST", ("oesophagus",), "l'œsophage", "die Speiseröhre", "el esófago"),
    Structure("trachea", _CT + _XR, "CHEST", ("airway",), "la trachée", "die Luftröhre", "la tráquea"),
    Structure("bone", _CT, "CHEST", ("bones", "skeleton"), "les os", "die Knochen", "los huesos"),
    Structure("body", _CT, "CHEST", ("body outline", "patient outline"), "le corps", "den Körper", "el cuerpo"),
    Structure("air", _CT, "ABDOMEN", ("free air", "gas"), "l'air libre", "die freie Luft", "el aire libre"),
    Structure("liver lesion", _CT + _MR + _US, "ABDOMEN", ("liver tumour", "hepatic lesion"), "la lésion hépatique", "die Leberläsion", "la lesión hepática"),
    Structure("lung nodule", _CT + _XR, "CHEST", ("pulmonary nodule", "nodule"), "le nodule pulmonaire", "den Lungenrundherd", "el nódulo pulmonar"),
    Structure("kidney stone", _CT + _US, "ABDOMEN", ("renal calculus",), "le calcul rénal", "den Nierenstein", "el cálculo renal"),
    Structure("pleural effusion", _CT + _XR + _US, "CHEST", ("effusion",), "l'épanchement pleural", "den Pleuraerguss", "el derrame pleural"),
    Structure("pneumothorax", _CT + _XR, "CHEST", (), "le pneumothorax", "den Pneumothorax", "el neumotórax"),
    Structure("adrenal gland", _CT, "ABDOMEN", ("adrenal",), "la glande surrénale", "die Nebenniere", "la glándula suprarrenal"),
    Structure("colon", _CT, "ABDOMEN", ("large bowel",), "le côlon", "den Dickdarm", "el colon"),
    Structure("vertebrae", _CT + _MR, "SPINE", ("spine", "vertebral bodies"), "les vertèbres", "die Wirbel", "las vértebras"),
    Structure("spinal cord", _MR + _CT, "SPINE", ("cord",), "la moelle épinière", "das Rückenmark", "la médula espinal"),
    Structure("intracranial hemorrhage", _CT, "HEAD", ("brain bleed", "intracranial haemorrhage"), "l'hémorragie intracrânienne", "die intrakranielle Blutung", "la hemorragia intracraneal"),
    Structure("brain tumor", _MR, "BRAIN", ("brain tumour", "glioma", "tumor"), "la tumeur cérébrale", "den Hirntumor", "el tumor cerebral"),
    Structure("edema", _MR, "BRAIN", ("peritumoral edema", "oedema"), "l'œdème", "das Ödem", "el edema"),
    Structure("enhancing tumor", _MR, "BRAIN", ("enhancing tumour",), "la tumeur rehaussée", "den anreichernden Tumor", "el tumor realzado"),
    Structure("ventricles", _MR + _CT, "BRAIN", ("lateral ventricles",), "les ventricules", "die Ventrikel", "los ventrículos"),
    Structure("hippocampus", _MR, "BRAIN", (), "l'hippocampe", "den Hippocampus", "el hipocampo"),
    Structure("white matter lesions", _MR, "BRAIN", ("white matter hyperintensities",), "les lésions de la substance blanche", "die Marklagerläsionen", "las lesiones de sustancia blanca"),
    Structure("prostate", _MR, "PELVIS", ("prostate gland",), "la prostate", "die Prostata", "la próstata"),
    Structure("brain", _MR + _CT, "BRAIN", ("whole brain",), "le cerveau", "das Gehirn", "el cerebro"),
    Structure("meniscus", _MR, "KNEE", ("medial meniscus",), "le ménisque", "den Meniskus", "el menisco"),
    Structure("cartilage", _MR, "KNEE", ("knee cartilage",), "le cartilage", "den Knorpel", "el cartílago"),
    Structure("consolidation", _XR + _CT, "CHEST", ("airspace opacity",), "la condensation", "die Konsolidierung", "la consolidación"),
    Structure("cardiomegaly", _XR, "CHEST", ("enlarged heart",), "la cardiomégalie", "die Kardiomegalie", "la cardiomegalia"),
    Structure("clavicle", _XR, "CHEST", ("collarbone",), "la clavicule", "das Schlüsselbein", "la clavícula"),
    Structure("rib fracture", _XR + _CT, "CHEST", ("fractured rib",), "la fracture de côte", "die Rippenfraktur", "la fractura costal"),
    Structure("thyroid nodule", _US, "NECK", (), "le nodule thyroïdien", "den Schilddrüsenknoten", "el nódulo tiroideo"),
    Structure("thyroid", _US + _CT, "NECK", ("thyroid gland",), "la thyroïde", "die Schilddrüse", "la tiroides"),
    Structure("breast lesion", _US + _MR, "BREAST", ("breast mass",), "la lésion mammaire", "die Brustläsion", "la lesión mamaria"),
    Structure("fetal head", _US, "ABDOMEN", ("fetal skull",), "la tête fœtale", "den fetalen Kopf", "la cabeza fetal"),
    Structure("gallstone", _US + _CT, "ABDOMEN", ("gallstones",), "le calcul biliaire", "den Gallenstein", "el cálculo biliar"),
    Structure("carotid plaque", _US, "NECK", (), "la plaque carotidienne", "die Karotisplaque", "la placa carotídea"),
    Structure("nuclei", _SM, "", ("cell nuclei",), "les noyaux", "die Zellkerne", "los núcleos"),
    Structure("cells", _SM, "", ("tumor cells",), "les cellules", "die Zellen", "las células"),
    Structure("tumor region", _SM, "", ("tumour area", "invasive tumor"), "la région tumorale", "die Tumorregion", "la región tumoral"),
    Structure("glands", _SM, "", ("glandular structures",), "les glandes", "die Drüsen", "las glándulas"),
    Structure("mitotic figures", _SM, "", ("mitoses",), "les figures mitotiques", "die Mitosefiguren", "las figuras mitóticas"),
    Structure("lymphocytes", _SM, "", ("immune cells",), "les lymphocytes", "die Lymphozyten", "los linfocitos"),
)  # fmt: skip

#: findings and topics asked about in questions (vqa) and knowledge look-ups (retrieval): en, fr, de, es
TOPICS = (
    ("pleural effusion", "épanchement pleural", "Pleuraerguss", "derrame pleural"),
    ("pneumothorax", "pneumothorax", "Pneumothorax", "neumotórax"),
    ("pneumonia", "pneumonie", "Pneumonie", "neumonía"),
    ("pulmonary embolism", "embolie pulmonaire", "Lungenembolie", "embolia pulmonar"),
    ("ground-glass opacity", "verre dépoli", "Milchglastrübung", "opacidad en vidrio deslustrado"),
    ("emphysema", "emphysème", "Emphysem", "enfisema"),
    ("atelectasis", "atélectasie", "Atelektase", "atelectasia"),
    ("sarcoidosis", "sarcoïdose", "Sarkoidose", "sarcoidosis"),
    ("fatty liver", "stéatose hépatique", "Fettleber", "hígado graso"),
    ("liver cirrhosis", "cirrhose", "Leberzirrhose", "cirrosis hepática"),
    ("renal cyst", "kyste rénal", "Nierenzyste", "quiste renal"),
    ("kidney stones", "lithiase rénale", "Nierensteine", "cálculos renales"),
    ("appendicitis", "appendicite", "Appendizitis", "apendicitis"),
    ("pancreatitis", "pancréatite", "Pankreatitis", "pancreatitis"),
    ("glioblastoma", "glioblastome", "Glioblastom", "glioblastoma"),
    ("meningioma", "méningiome", "Meningeom", "meningioma"),
    ("ischemic stroke", "AVC ischémique", "ischämischer Schlaganfall", "ictus isquémico"),
    ("multiple sclerosis", "sclérose en plaques", "Multiple Sklerose", "esclerosis múltiple"),
    ("thyroid nodules", "nodules thyroïdiens", "Schilddrüsenknoten", "nódulos tiroideos"),
    ("TI-RADS", "TI-RADS", "TI-RADS", "TI-RADS"),
    ("BI-RADS 4", "BI-RADS 4", "BI-RADS 4", "BI-RADS 4"),
    ("breast cancer", "cancer du sein", "Brustkrebs", "cáncer de mama"),
    ("prostate cancer", "cancer de la prostate", "Prostatakrebs", "cáncer de próstata"),
    ("Gleason grading", "score de Gleason", "Gleason-Score", "escala de Gleason"),
    (
        "ductal carcinoma in situ",
        "carcinome canalaire in situ",
        "duktales Carcinoma in situ",
        "carcinoma ductal in situ",
    ),
    ("lymphoma", "lymphome", "Lymphom", "linfoma"),
    ("osteoporosis", "ostéoporose", "Osteoporose", "osteoporosis"),
    ("scaphoid fracture", "fracture du scaphoïde", "Skaphoidfraktur", "fractura de escafoides"),
    ("cardiomegaly", "cardiomégalie", "Kardiomegalie", "cardiomegalia"),
    ("aortic aneurysm", "anévrisme aortique", "Aortenaneurysma", "aneurisma aórtico"),
    ("hydrocephalus", "hydrocéphalie", "Hydrozephalus", "hidrocefalia"),
    ("mitotic activity", "activité mitotique", "Mitoseaktivität", "actividad mitótica"),
)

#: candidate label sets for classification requests that list their labels, per language
LABEL_SETS = (
    {"en": ("normal", "abnormal"), "fr": ("normal", "anormal"), "de": ("normal", "auffällig"), "es": ("normal", "anormal")},
    {"en": ("benign", "malignant"), "fr": ("bénin", "malin"), "de": ("gutartig", "bösartig"), "es": ("benigno", "maligno")},
    {"en": ("pneumonia", "normal"), "fr": ("pneumonie", "normal"), "de": ("Pneumonie", "normal"), "es": ("neumonía", "normal")},
    {"en": ("covid-19", "pneumonia", "normal"), "fr": ("covid-19", "pneumonie", "normal"), "de": ("COVID-19", "Pneumonie", "normal"), "es": ("covid-19", "neumonía", "normal")},
    {"en": ("glioma", "meningioma", "pituitary tumor"), "fr": ("gliome", "méningiome", "adénome hypophysaire"), "de": ("Gliom", "Meningeom", "Hypophysentumor"), "es": ("glioma", "meningioma", "tumor hipofisario")},
    {"en": ("fracture", "no fracture"), "fr": ("fracture", "pas de fracture"), "de": ("Fraktur", "keine Fraktur"), "es": ("fractura", "sin fractura")},
    {"en": ("tumor", "no tumor"), "fr": ("tumeur", "pas de tumeur"), "de": ("Tumor", "kein Tumor"), "es": ("tumor", "sin tumor")},
    {"en": ("chest x-ray", "brain MRI", "abdominal CT"), "fr": ("radio thoracique", "IRM cérébrale", "scanner abdominal"), "de": ("Thoraxröntgen", "Schädel-MRT", "Abdomen-CT"), "es": ("radiografía de tórax", "resonancia cerebral", "TC abdominal")},
    {"en": ("contrast", "non-contrast"), "fr": ("injecté", "non injecté"), "de": ("mit Kontrastmittel", "ohne Kontrastmittel"), "es": ("con contraste", "sin contraste")},
    {"en": ("fatty liver", "normal liver"), "fr": ("foie stéatosique", "foie normal"), "de": ("Fettleber", "normale Leber"), "es": ("hígado graso", "hígado normal")},
    {"en": ("cyst", "solid nodule"), "fr": ("kyste", "nodule solide"), "de": ("Zyste", "solider Knoten"), "es": ("quiste", "nódulo sólido")},
    {"en": ("ductal carcinoma", "lobular carcinoma", "normal tissue"), "fr": ("carcinome canalaire", "carcinome lobulaire", "tissu normal"), "de": ("duktales Karzinom", "lobuläres Karzinom", "Normalgewebe"), "es": ("carcinoma ductal", "carcinoma lobulillar", "tejido normal")},
    {"en": ("tumor tissue", "stroma", "necrosis"), "fr": ("tissu tumoral", "stroma", "nécrose"), "de": ("Tumorgewebe", "Stroma", "Nekrose"), "es": ("tejido tumoral", "estroma", "necrosis")},
    {"en": ("PA view", "lateral view"), "fr": ("face", "profil"), "de": ("p.a.", "seitlich"), "es": ("PA", "lateral")},
)  # fmt: skip

AND = {"en": "and", "fr": "et", "de": "und", "es": "y"}
OR = {"en": "or", "fr": "ou", "de": "oder", "es": "o"}

#: (body part, study descriptions) per modality; series descriptions are drawn from the same lists
STUDIES = {
    "CT": {
        "CHEST": ("CT CHEST W/O CONTRAST", "CT THORAX", "LOW DOSE CHEST CT", "CTA CHEST PE"),
        "ABDOMEN": ("CT ABDOMEN PELVIS W CONTRAST", "CT ABD", "CT UROGRAM", "PORTAL VENOUS PHASE"),
        "HEAD": ("CT HEAD W/O", "CT BRAIN NON CONTRAST"),
        "BRAIN": ("CT BRAIN", "CT HEAD PERFUSION"),
        "SPINE": ("CT SPINE", "CT LUMBAR SPINE"),
        "PELVIS": ("CT PELVIS",),
        "NECK": ("CT NECK W CONTRAST",),
    },
    "MR": {
        "BRAIN": ("MR BRAIN W/WO", "MRI HEAD", "T1 POST GAD", "FLAIR AX"),
        "KNEE": ("MR KNEE", "PD FS COR"),
        "PELVIS": ("MR PROSTATE MULTIPARAMETRIC", "T2 AX PELVIS"),
        "ABDOMEN": ("MR LIVER", "MRCP", "T2 HASTE"),
        "SPINE": ("MR C-SPINE", "MR LUMBAR SPINE"),
        "BREAST": ("MR BREAST BILATERAL",),
        "CHEST": ("CARDIAC MR",),
    },
    "CR": {
        "CHEST": ("XR CHEST PA", "CHEST 2 VIEWS", "PORTABLE CHEST"),
        "HAND": ("XR HAND",),
        "KNEE": ("XR KNEE",),
    },
    "DX": {
        "CHEST": ("DX CHEST PA", "CHEST AP SUPINE", "THORAX PA"),
        "HAND": ("DX HAND",),
        "SPINE": ("DX L-SPINE",),
    },
    "US": {
        "NECK": ("US THYROID", "US CAROTID"),
        "ABDOMEN": ("US ABDOMEN COMPLETE", "US RUQ", "OB US 2ND TRIMESTER"),
        "BREAST": ("US BREAST LEFT",),
        "PELVIS": ("US PELVIS",),
        "CHEST": ("US PLEURA",),
    },
    "SM": {
        "": ("H&E WHOLE SLIDE", "BREAST BIOPSY H&E", "COLON RESECTION", "LUNG BIOPSY"),
        "BREAST": ("BREAST CORE BIOPSY",),
        "COLON": ("COLON POLYP",),
    },
    "": {"": ("",)},
}
FRAMES = {
    "CT": (40, 400),
    "MR": (20, 200),
    "CR": (1, 1),
    "DX": (1, 1),
    "US": (1, 60),
    "SM": (4, 2000),
    "": (0, 0),
}

# ---------------------------------------------------------------------------------------------- phrasings

#: Keyword vocabularies per intent and language, shared by every split: a held-out family is a new sentence
#: frame around words the model has met. Slots: {v} a verb (imperative), {vi} the infinitive, {n} a noun,
#: {k} a knowledge question's opening, {q} a presence question's opening, {gv}/{gvi} a grounding verb.
KEYWORDS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "grounded_segmentation": {
        "en": {
            "v": ("segment", "outline", "contour", "delineate", "mask", "trace", "shade", "extract", "isolate",
                  "auto-contour", "colour in", "map out", "segment out", "draw around", "measure the volume of",
                  "compute the volume of", "create a mask of", "make a segmentation of"),
            "n": ("segmentation", "mask", "contour", "outline", "volume", "segmentation mask", "volumetry"),
        },
        "fr": {"v": ("segmente", "contoure", "délimite", "détoure"), "vi": ("segmenter", "contourer", "délimiter", "détourer"),
               "n": ("segmentation", "contour", "masque", "volume")},
        "de": {"v": ("segmentiere", "umrande", "konturiere", "vermiss"), "vi": ("segmentieren", "umranden", "konturieren", "vermessen"),
               "n": ("Segmentierung", "Maske", "Kontur", "Volumen")},
        "es": {"v": ("segmenta", "contornea", "delimita", "delinea"), "vi": ("segmentar", "contornear", "delimitar", "delinear"),
               "n": ("segmentación", "máscara", "contorno", "volumen")},
    },
    "grounding": {
        "en": {
            "v": ("locate", "find", "detect", "box", "localize", "localise", "spot", "mark", "point out", "flag",
                  "pinpoint", "draw a box around", "put a bounding box on", "circle", "search for", "run detection for"),
            "n": ("location", "bounding box", "position", "coordinates", "box", "detection"),
        },
        "fr": {"v": ("localise", "trouve", "détecte", "encadre", "repère"), "vi": ("localiser", "trouver", "détecter", "encadrer", "repérer"),
               "n": ("position", "localisation", "boîte englobante")},
        "de": {"v": ("finde", "lokalisiere", "markiere", "erkenne", "umrahme"), "vi": ("finden", "lokalisieren", "markieren", "erkennen", "umrahmen"),
               "n": ("Position", "Lokalisation", "Bounding Box")},
        "es": {"v": ("localiza", "encuentra", "detecta", "señala", "marca"), "vi": ("localizar", "encontrar", "detectar", "señalar", "marcar"),
               "n": ("posición", "localización", "recuadro")},
    },
    "classification": {
        "en": {"v": ("classify", "categorize", "categorise", "label", "sort"),
               "n": ("image type", "modality", "category", "kind of image", "body region", "organ shown")},
        "fr": {"v": ("classe", "catégorise"), "vi": ("classer", "catégoriser"),
               "n": ("le type d'image", "la modalité", "la catégorie", "l'organe visible")},
        "de": {"v": ("klassifiziere", "kategorisiere"), "vi": ("klassifizieren", "kategorisieren", "einordnen"),
               "n": ("den Bildtyp", "die Modalität", "die Kategorie", "das Organ")},
        "es": {"v": ("clasifica", "categoriza"), "vi": ("clasificar", "categorizar"),
               "n": ("el tipo de imagen", "la modalidad", "la categoría", "el órgano")},
    },
    "report_generation": {
        "en": {"v": ("write", "generate", "draft", "dictate", "prepare", "produce", "compose", "create"),
               "n": ("report", "radiology report", "structured report", "findings and impression", "write-up", "summary report")},
        "fr": {"v": ("rédige", "écris", "génère", "prépare"), "vi": ("rédiger", "écrire", "générer", "préparer"),
               "n": ("un compte rendu", "le rapport", "les conclusions", "un rapport radiologique")},
        "de": {"v": ("schreibe", "erstelle", "generiere", "diktiere"), "vi": ("schreiben", "erstellen", "generieren", "diktieren"),
               "n": ("einen Befund", "den Befundbericht", "einen Bericht", "den radiologischen Befund")},
        "es": {"v": ("redacta", "escribe", "genera", "prepara"), "vi": ("redactar", "escribir", "generar", "preparar"),
               "n": ("un informe", "el informe radiológico", "las conclusiones", "el informe")},
    },
    "retrieval": {
        "en": {"k": ("explain", "tell me about", "define", "give me background on", "what is known about", "look up",
                     "summarize the literature on", "what are the causes of", "what is the treatment of",
                     "what is the differential diagnosis of", "what are the risk factors for", "what is the prognosis of",
                     "what are the typical imaging features of", "what are the guidelines for", "how common is",
                     "what is", "what does the literature say about", "what are the symptoms of")},
        "fr": {"k": ("explique", "définis", "donne les causes de", "parle-moi de", "quel est le traitement de",
                     "résume la littérature sur", "quel est le diagnostic différentiel de", "c'est quoi", "qu'est-ce que",
                     "que sait-on de", "quels sont les signes de", "comment reconnaître")},
        "de": {"k": ("erkläre", "definiere", "nenne die Ursachen von", "erzähl mir etwas über", "wie behandelt man",
                     "fasse die Literatur zusammen zu", "Differenzialdiagnose von", "was ist", "was bedeutet",
                     "was weiß man über", "welche Ursachen hat", "wie erkennt man")},
        "es": {"k": ("explica", "define", "dime las causas de", "háblame de", "cómo se trata", "resume la literatura sobre",
                     "diagnóstico diferencial de", "qué es", "qué significa", "qué se sabe de", "cuáles son las causas de",
                     "cómo se reconoce")},
    },
    "vqa": {
        "en": {"q": ("is there", "do you see", "can you see", "is there any", "are there signs of", "is there evidence of", "do we have",
                     "any", "do we see", "can we see", "is there any sign of")},
        "fr": {"q": ("y a-t-il", "voit-on", "existe-t-il des signes de", "y a-t-il une présence de", "est-ce qu'il y a",
                     "vois-tu", "on voit", "note-t-on")},
        "de": {"q": ("gibt es", "sieht man", "gibt es Hinweise auf", "zeigt sich", "siehst du", "erkennst du",
                     "findet sich")},
        "es": {"q": ("hay", "se ve", "hay signos de", "se observa", "ves", "existe", "aparece", "hay evidencia de")},
    },
}  # fmt: skip
KEYWORDS["two_step"] = {
    lang: {"gv": w["v"], "gvi": w.get("vi", w["v"])} for lang, w in KEYWORDS["grounding"].items()
}
KEYWORDS["segmentation"] = KEYWORDS["grounded_segmentation"]
KEYWORDS["classification_labels"] = KEYWORDS["classification"]

#: intent -> language -> families; a family is one sentence frame, its variants separated by " | ".
#: Slots: {s} structures, {t} a topic, {labels} candidate labels, {box} a box, {pt} a point, {f} a frame,
#: and the keyword slots of KEYWORDS.
PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "grounded_segmentation": {
        "en": (
            "{v} the {s} | {v} {s}",
            "please {v} the {s} | {v} the {s} please | kindly {v} the {s}",
            "can you {v} the {s}? | could you {v} the {s} for me? | would you {v} the {s}?",
            "I need you to {v} the {s} | I'd like you to {v} the {s} | I want you to {v} the {s}",
            "{s} {n} | {n} of the {s} | {s} {n} please",
            "go ahead and {v} the {s} | now {v} the {s} | next, {v} the {s}",
            "{v} the {s} on this scan | {v} the {s} in this study | {v} the {s} on every slice",
            "I need a {n} of the {s} | give me a {n} of the {s} | get me the {s} {n}",
            "help me {v} the {s} | let's {v} the {s} | time to {v} the {s}",
            "{v} the {s} asap | quickly {v} the {s} | {v} the {s}, thanks",
            "use grounded segmentation to {v} the {s} | run grounding dino + medsam and {v} the {s} | grounded sam: {v} the {s}",
            "{n}: {s} | {n} needed for the {s} | requesting a {n} of the {s}",
            "the {s} needs a {n} | can I get a {n} of the {s}? | I'd like a {n} for the {s}",
            "{v} the {s} and show me the result | {v} the {s} so I can check it | {v} the {s} for the radiotherapy plan",
            "could you please {v} the {s} on all slices? | please {v} the {s} across the whole series | {v} the {s} slice by slice",
        ),
        "fr": (
            "{v} {s} | {v} {s} svp",
            "peux-tu {vi} {s} ? | pourrais-tu {vi} {s} ?",
            "merci de {vi} {s} | je voudrais {vi} {s}",
            "{n} : {s} | {n} pour {s} svp",
            "il faut {vi} {s} | tu dois {vi} {s}",
            "{v} {s} sur cette image | {v} {s} sur chaque coupe",
            "est-ce que tu peux {vi} {s} ? | tu peux {vi} {s} ?",
            "on doit {vi} {s} | j'aimerais {vi} {s}",
            "pourrais-tu {vi} {s} sur toutes les coupes ? | merci de bien vouloir {vi} {s}",
            "{v} {s} et montre-moi le résultat | {v} {s}, je veux vérifier",
            "j'ai besoin de {vi} {s} | ce serait possible de {vi} {s} ?",
            "{s} : à {vi} svp | {s}, à {vi} sur toute la série",
            "{n} pour {s} sur toute la série | {n} pour {s} avant la radiothérapie",
            "tu veux bien {vi} {s} ? | tu pourrais {vi} {s} rapidement ?",
        ),
        "de": (
            "{v} {s} | bitte {v} {s}",
            "kannst du {s} {vi}? | könntest du {s} {vi}?",
            "{s} bitte {vi} | ich möchte {s} {vi}",
            "{n} für {s} | {n}: {s} bitte",
            "du sollst {s} {vi} | wir müssen {s} {vi}",
            "{v} {s} auf diesem Bild | {v} {s} in jeder Schicht",
            "kannst du bitte {s} {vi}? | würdest du {s} {vi}?",
            "bitte einmal {s} {vi} | einmal {s} {vi}, danke",
            "könntest du bitte {s} auf allen Schichten {vi}? | bitte {s} in der ganzen Serie {vi}",
            "{v} {s} und zeig mir das Ergebnis | {v} {s}, ich will es prüfen",
            "{n} für {s} gewünscht | {n} für {s} benötigt",
            "es wäre gut, {s} zu {vi} | ist es möglich, {s} zu {vi}?",
            "{s}: bitte {vi} | {s} - {vi}, bitte",
            "{n} für {s} vor der Bestrahlung | {n} für {s} auf allen Schichten",
        ),
        "es": (
            "{v} {s} | por favor {v} {s}",
            "¿puedes {vi} {s}? | ¿podrías {vi} {s}?",
            "necesito {vi} {s} | quiero {vi} {s}",
            "{n}: {s} | {n} para {s} por favor",
            "hay que {vi} {s} | tienes que {vi} {s}",
            "{v} {s} en esta imagen | {v} {s} en cada corte",
            "¿me puedes {vi} {s}? | ¿serías capaz de {vi} {s}?",
            "me gustaría {vi} {s} | debemos {vi} {s}",
            "¿podrías {vi} {s} en todos los cortes, por favor? | por favor, {vi} {s} en toda la serie",
            "{v} {s} y enséñame el resultado | {v} {s}, quiero revisarlo",
            "me haría falta {vi} {s} | ¿sería posible {vi} {s}?",
            "{s}: hay que {vi} | {s}: {v}, por favor",
            "{n} para {s} en toda la serie | {n} para {s} antes de la radioterapia",
            "¿te importaría {vi} {s}? | ¿me ayudas a {vi} {s}?",
        ),
    },
    "grounding": {
        "en": (
            "{v} the {s} | {v} {s}",
            "please {v} the {s} | {v} the {s} please | kindly {v} the {s}",
            "can you {v} the {s}? | could you {v} the {s} for me? | would you {v} the {s}?",
            "I need you to {v} the {s} | I'd like you to {v} the {s} | I want you to {v} the {s}",
            "{s} {n} | {n} of the {s} | {s} {n} please",
            "where is the {s}? | where's the {s}? | where are the {s}?",
            "{v} the {s} on this image | {v} the {s} in this study | {v} the {s} on the scan",
            "run grounding dino to {v} the {s} | grounding: {v} the {s} | use grounding to {v} the {s}",
            "help me {v} the {s} | let's {v} the {s} | time to {v} the {s}",
            "go ahead and {v} the {s} | now {v} the {s} | next, {v} the {s}",
            "I need the {n} of the {s} | give me the {n} of the {s} | get me the {s} {n}",
            "show me where the {s} is | tell me where the {s} is on the image | can you show me where the {s} is?",
            "{v} the {s} and give me the coordinates | {v} the {s} and return the box | {v} the {s}, coordinates please",
            "can you tell me where exactly the {s} is located? | where exactly is the {s} on this image? | whereabouts is the {s}?",
            "I'm looking for the {s}, {v} it please | I can't find the {s}, can you {v} it? | {v} any {s} you can find",
        ),
        "fr": (
            "{v} {s} | {v} {s} svp",
            "peux-tu {vi} {s} ? | pourrais-tu {vi} {s} ?",
            "où se trouve {s} ? | où est {s} ?",
            "merci de {vi} {s} | je voudrais {vi} {s}",
            "{n} : {s} | {n} pour {s} svp",
            "montre-moi où est {s} | dis-moi où se trouve {s}",
            "{v} {s} sur cette image | {v} {s} sur le cliché",
            "est-ce que tu peux {vi} {s} ? | tu peux {vi} {s} ?",
            "j'aimerais {vi} {s} | on doit {vi} {s}",
            "{v} {s} et donne-moi les coordonnées | {v} {s} et renvoie la boîte",
            "où exactement se situe {s} ? | à quel endroit se trouve {s} ?",
            "aide-moi à {vi} {s} | je n'arrive pas à {vi} {s}",
            "{v} {s} s'il te plaît | {v} rapidement {s}",
        ),
        "de": (
            "{v} {s} | bitte {v} {s}",
            "kannst du {s} {vi}? | könntest du {s} {vi}?",
            "wo ist {s}? | wo liegt {s}?",
            "{s} bitte {vi} | ich möchte {s} {vi}",
            "{n}: {s} | {n} für {s} bitte",
            "zeig mir, wo {s} liegt | sag mir, wo {s} ist",
            "{v} {s} auf diesem Bild | {v} {s} auf der Aufnahme",
            "kannst du bitte {s} {vi}? | würdest du {s} {vi}?",
            "bitte einmal {s} {vi} | einmal {s} {vi}, danke",
            "{v} {s} und gib mir die Koordinaten | {v} {s} und gib die Box zurück",
            "kannst du mir zeigen, wo genau {s} ist? | wo genau liegt {s}?",
            "hilf mir, {s} zu {vi} | ich schaffe es nicht, {s} zu {vi}",
            "{v} {s} bitte schnell | {v} sofort {s}",
        ),
        "es": (
            "{v} {s} | por favor {v} {s}",
            "¿puedes {vi} {s}? | ¿podrías {vi} {s}?",
            "¿dónde está {s}? | ¿dónde se ve {s}?",
            "necesito {vi} {s} | quiero {vi} {s}",
            "{n}: {s} | {n} para {s} por favor",
            "muéstrame dónde está {s} | dime dónde se ve {s}",
            "{v} {s} en esta imagen | {v} {s} en la placa",
            "¿me puedes {vi} {s}? | ¿serías capaz de {vi} {s}?",
            "me gustaría {vi} {s} | debemos {vi} {s}",
            "{v} {s} y dame las coordenadas | {v} {s} y devuelve el recuadro",
            "¿dónde exactamente está {s}? | ¿en qué parte se encuentra {s}?",
            "ayúdame a {vi} {s} | no consigo {vi} {s}",
            "{v} {s} rápido | {v} ya {s}, por favor",
        ),
    },
    "two_step": {
        "en": (
            "{gv} the {s}, then segment the boxes | {gv} the {s} and then segment inside the boxes",
            "first {gv} the {s}, then run medsam on the boxes | {gv} the {s} first, then medsam on those boxes",
            "grounding then medsam for the {s} | grounding dino + medsam in two steps: {s}",
            "two steps: {gv} the {s}, then segment it | in two steps, {gv} the {s} and segment the detections",
            "step 1 {gv} the {s}, step 2 segment the detections | step one: {gv} the {s}; step two: segment each box",
            "use the boxes of the {s} as medsam prompts | {gv} the {s} and feed the boxes to medsam",
            "{gv} the {s} first; once you have the boxes, segment them with medsam | after you {gv} the {s}, segment each box",
            "two-stage please: {gv} the {s}, then segment within each box | two stages: {gv} the {s}, then box-prompted segmentation",
            "{gv} the {s}. then take those boxes and segment them | {gv} the {s}. next, segment what's inside the boxes",
            "I want boxes for the {s} first and then masks from those boxes | boxes of the {s} first, masks from the boxes second",
            "pipeline: {gv} the {s} -> segment the boxes | {gv} the {s} => medsam on the boxes",
            "could you {gv} the {s} and then segment the resulting boxes? | please {gv} the {s}, then segment inside each detection",
            "1) {gv} the {s} 2) segment the boxes | 1. {gv} the {s} 2. medsam on each box",
            "start by detecting the {s}, then segment the detected boxes | begin with a detection of the {s}; afterwards segment the boxes",
            "{gv} the {s} and pass the boxes to medsam for segmentation | {gv} the {s}, and use each box as a prompt to segment it",
        ),
        "fr": (
            "{gv} {s} puis segmente les boîtes avec medsam | {gv} {s}, puis segmente dans les boîtes",
            "d'abord {gvi} {s}, ensuite medsam sur les boîtes | en deux étapes : {gvi} {s} puis medsam",
            "{gv} {s} et passe les boîtes à medsam | {gv} {s}, ensuite segmente chaque boîte",
            "en deux temps : {gvi} {s}, puis segmenter les boîtes | étape 1 : {gvi} {s} ; étape 2 : medsam",
            "{gv} d'abord {s}, puis segmente l'intérieur des boîtes | commence par {gvi} {s}, ensuite segmente chaque boîte",
            "1) {gvi} {s} 2) segmenter les boîtes | 1. {gvi} {s} 2. medsam sur chaque boîte",
            "{gv} {s}. ensuite, prends ces boîtes et segmente-les | {gv} {s}. après, segmente ce qu'il y a dans les boîtes",
            "je veux d'abord des boîtes pour {s}, puis des masques à partir de ces boîtes | des boîtes pour {s} d'abord, des masques ensuite",
            "en deux étapes s'il te plaît : {gvi} {s}, puis segmenter dans les boîtes | deux étapes : {gvi} {s}, puis segmenter chaque détection",
            "pourrais-tu {gvi} {s} puis segmenter les boîtes obtenues ? | peux-tu {gvi} {s} et ensuite segmenter chaque boîte ?",
            "{gv} {s} -> segmente les boîtes | {gv} {s} => medsam sur les boîtes",
            "{gv} {s} et utilise chaque boîte comme prompt pour segmenter | {gv} {s}, puis sers-toi des boîtes pour segmenter",
            "première étape : {gvi} {s} ; deuxième étape : segmenter dans les boîtes | première étape {gvi} {s}, seconde étape medsam sur les boîtes",
            "détection puis segmentation : {gv} {s}, puis segmente les boîtes | {gv} {s}, puis lance medsam sur les détections",
        ),
        "de": (
            "{gv} {s} und segmentiere dann die Boxen mit MedSAM | {gv} {s}, dann in den Boxen segmentieren",
            "zuerst {s} {gvi}, danach MedSAM auf die Boxen | in zwei Schritten: {s} {gvi}, dann MedSAM",
            "{gv} {s} und gib die Boxen an MedSAM | {gv} {s}, danach jede Box segmentieren",
            "Schritt 1: {s} {gvi}, Schritt 2: die Boxen segmentieren | erst {gv} {s}, dann MedSAM in den Boxen",
            "{gv} zuerst {s}, dann segmentiere das Innere der Boxen | fang damit an, {s} zu {gvi}, dann jede Box segmentieren",
            "1) {s} {gvi} 2) die Boxen segmentieren | 1. {s} {gvi} 2. MedSAM auf jede Box",
            "{gv} {s}. Danach nimm diese Boxen und segmentiere sie | {gv} {s}. Anschließend den Inhalt der Boxen segmentieren",
            "ich will zuerst Boxen für {s} und dann Masken aus diesen Boxen | erst Boxen für {s}, dann Masken aus den Boxen",
            "zweistufig bitte: {s} {gvi}, danach in den Boxen segmentieren | zwei Schritte: {s} {gvi}, dann jede Detektion segmentieren",
            "könntest du {s} {gvi} und danach die gefundenen Boxen segmentieren? | kannst du {s} {gvi} und anschließend jede Box segmentieren?",
            "{gv} {s} -> Boxen segmentieren | {gv} {s} => MedSAM auf die Boxen",
            "{gv} {s} und nutze jede Box als Prompt für die Segmentierung | {gv} {s}, dann die Boxen als Prompts zum Segmentieren nehmen",
            "erster Schritt: {s} {gvi}; zweiter Schritt: in den Boxen segmentieren | Schritt eins {s} {gvi}, Schritt zwei MedSAM auf die Boxen",
            "Detektion, dann Segmentierung: {gv} {s}, dann segmentiere die Boxen | {gv} {s}, dann lass MedSAM über die Detektionen laufen",
        ),
        "es": (
            "{gv} {s} y luego segmenta las cajas con medsam | {gv} {s}, después segmenta dentro de las cajas",
            "primero {gvi} {s}, después medsam sobre las cajas | en dos pasos: {gvi} {s} y luego medsam",
            "{gv} {s} y pasa las cajas a medsam | {gv} {s}, luego segmenta cada caja",
            "paso 1: {gvi} {s}; paso 2: segmentar las cajas | en dos tiempos: {gvi} {s} y segmentar las cajas",
            "{gv} primero {s}, luego segmenta el interior de las cajas | empieza por {gvi} {s}, después segmenta cada caja",
            "1) {gvi} {s} 2) segmentar las cajas | 1. {gvi} {s} 2. medsam en cada caja",
            "{gv} {s}. después toma esas cajas y segméntalas | {gv} {s}. a continuación, segmenta lo que hay dentro de las cajas",
            "quiero primero cajas para {s} y luego máscaras a partir de esas cajas | primero cajas para {s}, después máscaras de las cajas",
            "en dos etapas, por favor: {gvi} {s} y luego segmentar dentro de las cajas | dos pasos: {gvi} {s}, luego segmentar cada detección",
            "¿podrías {gvi} {s} y luego segmentar las cajas obtenidas? | ¿puedes {gvi} {s} y después segmentar cada caja?",
            "{gv} {s} -> segmenta las cajas | {gv} {s} => medsam en las cajas",
            "{gv} {s} y usa cada caja como prompt para segmentar | {gv} {s}, luego usa las cajas para segmentar",
            "primer paso: {gvi} {s}; segundo paso: segmentar dentro de las cajas | primer paso {gvi} {s}, segundo paso medsam en las cajas",
            "detección y después segmentación: {gv} {s}, luego segmenta las cajas | {gv} {s}, luego pasa medsam por las detecciones",
        ),
    },
    "segmentation": {
        "en": (
            "segment the {s} in box {box} on frame {f} | segment inside the box {box}, frame {f}, label {s}",
            "medsam with box {box} on frame {f} for the {s} | run medsam: box {box}, frame {f} ({s})",
            "segment the {s} at point {pt} on frame {f} | click-segment the {s} at {pt}, frame {f}",
            "use the point {pt} on frame {f} to segment the {s} | seed point {pt} on frame {f}: segment the {s}",
            "here is a box {box} on frame {f} around the {s}; segment it | box {box} frame {f} is the {s}, give me its mask",
            "{v} the {s} inside {box} on frame {f} | {v} the {s} from the point {pt} on frame {f}",
            "click at {pt} on frame {f} and segment the {s} | point prompt {pt}, frame {f}, for the {s}",
            "box prompt {box}, frame {f}, for the {s} | the {s} is in box {box} on frame {f}; segment it",
            "I drew a box {box} on frame {f}; please segment the {s} in it | my box for the {s} is {box} (frame {f}), segment it",
            "frame {f}, box {box}: {v} the {s} | frame {f}, point {pt}: {v} the {s}",
            "the {s} is at {pt} on frame {f}, please give me its mask | I clicked on the {s} at {pt} (frame {f}); segment from there",
            "use my bounding box {box} on slice {f} to segment the {s} | take the box {box} on slice {f} as the prompt for the {s}",
            "segment only what is inside {box} on frame {f} (the {s}) | restrict the segmentation to {box} on frame {f}: {s}",
            "can you segment the {s} from my point {pt} on frame {f}? | could you grow a mask for the {s} from {pt}, frame {f}?",
            "box-prompted segmentation of the {s}: {box}, frame {f} | point-prompted segmentation of the {s}: {pt}, frame {f}",
            "on frame {f} the {s} sits in {box}; please {v} the {s} | on frame {f} the {s} is under {pt}; please {v} the {s}",
            "I need a {n} of the {s} from the box {box} on frame {f} | I need a {n} of the {s} from the point {pt} on frame {f}",
        ),
        "fr": (
            "segmente {s} dans la boîte {box} sur l'image {f} | {v} {s} dans la boîte {box}, image {f}",
            "segmente {s} au point {pt}, image {f} | point {pt} sur l'image {f} : {v} {s}",
            "medsam : boîte {box}, image {f}, pour {s} | medsam au point {pt}, image {f}, pour {s}",
            "voici une boîte {box} sur l'image {f} autour de {s} : segmente-la | clique au point {pt}, image {f}, et segmente {s}",
            "j'ai tracé une boîte {box} sur l'image {f} : segmente {s} dedans | ma boîte pour {s} est {box} (image {f}), segmente-la",
            "image {f}, boîte {box} : {v} {s} | image {f}, point {pt} : {v} {s}",
            "{s} est au point {pt} sur l'image {f}, donne-moi son masque | j'ai cliqué sur {s} en {pt} (image {f}) : segmente à partir de là",
            "utilise ma boîte englobante {box} sur la coupe {f} pour segmenter {s} | prends la boîte {box} de la coupe {f} comme prompt pour {s}",
            "segmente seulement l'intérieur de {box} sur l'image {f} ({s}) | limite la segmentation à la boîte {box}, image {f} : {s}",
            "peux-tu segmenter {s} à partir de mon point {pt} sur l'image {f} ? | pourrais-tu {vi} {s} depuis le point {pt}, image {f} ?",
            "segmentation guidée par boîte pour {s} : {box}, image {f} | segmentation guidée par point pour {s} : {pt}, image {f}",
            "coupe {f} : {s} dans la boîte {box}, merci de {vi} | coupe {f} : {s} sous le point {pt}, merci de {vi}",
            "il me faut un masque pour {s} à partir de la boîte {box}, image {f} | il me faut un masque pour {s} à partir du point {pt}, image {f}",
            "prompt boîte {box} sur l'image {f} pour {s} | prompt point {pt} sur l'image {f} pour {s}",
            "{v} {s} avec la boîte {box} (image {f}) | {v} {s} avec le point {pt} (image {f})",
        ),
        "de": (
            "segmentiere {s} in der Box {box} auf Bild {f} | {v} {s} in der Box {box}, Bild {f}",
            "segmentiere {s} am Punkt {pt} auf Bild {f} | Punkt {pt} auf Bild {f}: {v} {s}",
            "MedSAM mit Box {box}, Bild {f}, für {s} | MedSAM am Punkt {pt}, Bild {f}, für {s}",
            "hier ist eine Box {box} auf Bild {f} um {s}: segmentiere sie | klick auf den Punkt {pt}, Bild {f}, und segmentiere {s}",
            "ich habe eine Box {box} auf Bild {f} gezeichnet: segmentiere {s} darin | meine Box für {s} ist {box} (Bild {f}), segmentiere sie",
            "Bild {f}, Box {box}: {v} {s} | Bild {f}, Punkt {pt}: {v} {s}",
            "ich habe bei {pt} auf Bild {f} geklickt: segmentiere {s} von dort | Klick bei {pt} auf Bild {f}, bitte die Maske für {s}",
            "nutze meine Bounding Box {box} auf Schicht {f}, um {s} zu segmentieren | nimm die Box {box} von Schicht {f} als Prompt für {s}",
            "segmentiere nur innerhalb von {box} auf Bild {f} ({s}) | beschränke die Segmentierung auf die Box {box}, Bild {f}: {s}",
            "kannst du {s} ausgehend von meinem Punkt {pt} auf Bild {f} segmentieren? | könntest du {s} vom Punkt {pt}, Bild {f}, aus {vi}?",
            "boxgestützte Segmentierung für {s}: {box}, Bild {f} | punktgestützte Segmentierung für {s}: {pt}, Bild {f}",
            "auf Schicht {f} bitte {s} in der Box {box} {vi} | auf Schicht {f} bitte {s} am Punkt {pt} {vi}",
            "ich brauche eine Maske für {s} aus der Box {box}, Bild {f} | ich brauche eine Maske für {s} vom Punkt {pt}, Bild {f}",
            "Box-Prompt {box} auf Bild {f} für {s} | Punkt-Prompt {pt} auf Bild {f} für {s}",
            "{v} {s} mit der Box {box} (Bild {f}) | {v} {s} mit dem Punkt {pt} (Bild {f})",
        ),
        "es": (
            "segmenta {s} en la caja {box} en la imagen {f} | {v} {s} en la caja {box}, imagen {f}",
            "segmenta {s} en el punto {pt}, imagen {f} | punto {pt} en la imagen {f}: {v} {s}",
            "medsam: caja {box}, imagen {f}, para {s} | medsam en el punto {pt}, imagen {f}, para {s}",
            "aquí hay una caja {box} en la imagen {f} alrededor de {s}: segméntala | haz clic en el punto {pt}, imagen {f}, y segmenta {s}",
            "he dibujado una caja {box} en la imagen {f}: segmenta {s} dentro | mi caja para {s} es {box} (imagen {f}), segméntala",
            "imagen {f}, caja {box}: {v} {s} | imagen {f}, punto {pt}: {v} {s}",
            "hice clic en {pt} en la imagen {f}: segmenta {s} desde ahí | clic en {pt}, imagen {f}: dame la máscara para {s}",
            "usa mi recuadro {box} en el corte {f} para segmentar {s} | toma la caja {box} del corte {f} como prompt para {s}",
            "segmenta solo dentro de {box} en la imagen {f} ({s}) | limita la segmentación a la caja {box}, imagen {f}: {s}",
            "¿puedes segmentar {s} a partir de mi punto {pt} en la imagen {f}? | ¿podrías {vi} {s} desde el punto {pt}, imagen {f}?",
            "segmentación guiada por caja para {s}: {box}, imagen {f} | segmentación guiada por punto para {s}: {pt}, imagen {f}",
            "en el corte {f}, {s} está en la caja {box}: {vi}, por favor | en el corte {f}, {s} está bajo el punto {pt}: {vi}, por favor",
            "necesito una máscara para {s} a partir de la caja {box}, imagen {f} | necesito una máscara para {s} a partir del punto {pt}, imagen {f}",
            "prompt de caja {box} en la imagen {f} para {s} | prompt de punto {pt} en la imagen {f} para {s}",
            "{v} {s} con la caja {box} (imagen {f}) | {v} {s} con el punto {pt} (imagen {f})",
        ),
    },
    "classification": {
        "en": (
            "{v} this image | {v} the image",
            "what is the {n}? | which {n} is this? | tell me the {n}",
            "what type of image is this? | what kind of scan is this? | what sort of image am I looking at?",
            "run biomedclip on this | zero-shot classification please | biomedclip: {v} the image",
            "{v} | {n}? | {n} please",
            "can you {v} this study? | please {v} this picture | {v} this scan for me",
            "identify the {n} | determine the {n} of this image | recognise the {n}",
            "what type of study is this? | what kind of image is this one? | which type of exam is this?",
            "what modality was used for this image? | which imaging modality is this? | what modality are we looking at?",
            "which body region does this image show? | what part of the body is this? | which organ is shown here?",
            "quick classification of this image please | give me a classification of this study | I need this image classified",
            "can you tell me the {n} of this study? | I'd like to know the {n} of this image | find out the {n} for me",
            "assign a category to this image | put this image into a category | which category does this image belong to?",
            "{v} this exam | {v} this one quickly | {v} the study, no details needed",
        ),
        "fr": (
            "{v} cette image | {v} l'image",
            "donne {n} | indique {n}",
            "quel type d'image est-ce ? | de quel type d'examen s'agit-il ?",
            "peux-tu {vi} cette image ? | merci de {vi} l'image",
            "c'est quel type d'image ? | quel genre d'examen est-ce ?",
            "je voudrais {vi} cette image | il faut {vi} l'image",
            "{n} de cette image ? | donne-moi {n}",
            "quelle est la modalité de cette image ? | quelle modalité d'imagerie est-ce ?",
            "à quelle région du corps correspond cette image ? | quelle partie du corps est représentée ?",
            "peux-tu me dire {n} de cet examen ? | j'aimerais connaître {n} de cette image",
            "classification de cette image svp | fais une classification de l'examen",
            "attribue une catégorie à cette image | dans quelle catégorie ranger cette image ?",
            "merci de {vi} cet examen | {v} cet examen rapidement",
        ),
        "de": (
            "{v} dieses Bild | {v} das Bild",
            "bestimme {n} | nenne {n}",
            "was für ein Bild ist das? | welche Art von Untersuchung ist das?",
            "kannst du das Bild {vi}? | bitte das Bild {vi}",
            "welcher Bildtyp ist das? | um welche Untersuchung handelt es sich?",
            "ich möchte das Bild {vi} | das Bild bitte {vi}",
            "{n}? | sag mir {n}",
            "welche Modalität ist das? | mit welcher Modalität wurde das aufgenommen?",
            "welche Körperregion zeigt das Bild? | welcher Körperteil ist hier abgebildet?",
            "kannst du mir {n} dieser Untersuchung sagen? | ich möchte {n} dieses Bildes wissen",
            "Klassifikation dieses Bildes bitte | mach eine Klassifikation der Untersuchung",
            "ordne das Bild einer Kategorie zu | in welche Kategorie gehört dieses Bild?",
            "bitte diese Untersuchung {vi} | {v} diese Untersuchung schnell",
        ),
        "es": (
            "{v} esta imagen | {v} la imagen",
            "dime {n} | indica {n}",
            "¿qué tipo de imagen es? | ¿qué tipo de estudio es este?",
            "¿puedes {vi} la imagen? | necesito {vi} esta imagen",
            "¿qué clase de imagen es esta? | ¿de qué tipo de examen se trata?",
            "quiero {vi} la imagen | hay que {vi} esta imagen",
            "¿{n}? | dame {n}",
            "¿qué modalidad es esta? | ¿con qué modalidad se adquirió la imagen?",
            "¿qué región del cuerpo muestra la imagen? | ¿qué parte del cuerpo aparece aquí?",
            "¿me dices {n} de este estudio? | quisiera saber {n} de esta imagen",
            "clasificación de esta imagen, por favor | haz una clasificación del estudio",
            "asigna una categoría a esta imagen | ¿en qué categoría entra esta imagen?",
            "por favor, {vi} este estudio | {v} este estudio rápido",
        ),
    },
    "classification_labels": {
        "en": (
            "{v} this as {labels} | {v} the image as {labels}",
            "is this {labels}? | would you say {labels}?",
            "choose between {labels} | pick one: {labels}",
            "{labels}: which one fits? | {labels} - which is it?",
            "zero-shot classify with the labels {labels} | run biomedclip with the labels {labels}",
            "which label applies, {labels}? | which of {labels} fits this image?",
            "decide {labels} | your call: {labels}?",
            "is it {labels}? | does this look like {labels}?",
            "{labels}? | {labels} - your answer?",
            "I need to know if this is {labels} | tell me whether it's {labels}",
            "classify into one of: {labels} | assign one of these labels: {labels}",
            "given the options {labels}, which is most likely? | out of {labels}, what would you pick?",
            "{v} this study, options: {labels} | please {v} it as {labels}",
        ),
        "fr": (
            "{v} cette image : {labels} | {v} comme {labels}",
            "est-ce {labels} ? | c'est {labels} ?",
            "choisis entre {labels} | quelle catégorie, {labels} ?",
            "{labels} : lequel ? | {labels} : quelle catégorie ?",
            "plutôt {labels} ? | tu dirais {labels} ?",
            "classification : {labels} | étiquette : {labels}",
            "{labels} ? | {labels} : ta réponse ?",
            "je veux savoir si c'est {labels} | dis-moi si c'est {labels}",
            "classe dans une de ces catégories : {labels} | attribue une étiquette parmi {labels}",
            "parmi {labels}, lequel est le plus probable ? | entre {labels}, tu choisirais quoi ?",
            "{v} cet examen, options : {labels} | merci de {vi} l'image parmi {labels}",
            "à ton avis, {labels} ? | selon toi, c'est {labels} ?",
            "catégories possibles : {labels}. laquelle ? | les choix sont {labels} : lequel retiens-tu ?",
        ),
        "de": (
            "{v} als {labels} | {v} das Bild als {labels}",
            "ist das {labels}? | ist es {labels}?",
            "wähle zwischen {labels} | welche Kategorie, {labels}?",
            "{labels}: was trifft zu? | {labels}: welche Kategorie?",
            "eher {labels}? | würdest du sagen {labels}?",
            "Klassifikation: {labels} | Label: {labels}",
            "{labels}? | {labels} - deine Antwort?",
            "ich will wissen, ob das {labels} ist | sag mir, ob es {labels} ist",
            "ordne einer dieser Kategorien zu: {labels} | vergib ein Label aus {labels}",
            "was ist am wahrscheinlichsten: {labels}? | von {labels}, was würdest du wählen?",
            "{v} diese Untersuchung, Optionen: {labels} | bitte das Bild als {labels} {vi}",
            "deiner Meinung nach {labels}? | was meinst du, {labels}?",
            "mögliche Kategorien: {labels}. welche? | zur Auswahl stehen {labels}: welche passt?",
        ),
        "es": (
            "{v} como {labels} | {v} la imagen como {labels}",
            "¿es {labels}? | ¿esto es {labels}?",
            "elige entre {labels} | ¿qué categoría, {labels}?",
            "{labels}: ¿cuál? | {labels}: ¿qué categoría?",
            "¿más bien {labels}? | ¿dirías {labels}?",
            "clasificación: {labels} | etiqueta: {labels}",
            "¿{labels}? | {labels}: ¿tu respuesta?",
            "quiero saber si es {labels} | dime si es {labels}",
            "clasifica en una de estas categorías: {labels} | asigna una etiqueta entre {labels}",
            "entre {labels}, ¿cuál es más probable? | de {labels}, ¿qué elegirías?",
            "{v} este estudio, opciones: {labels} | por favor, {vi} la imagen entre {labels}",
            "en tu opinión, ¿{labels}? | según tú, ¿es {labels}?",
            "categorías posibles: {labels}. ¿cuál? | las opciones son {labels}: ¿cuál eliges?",
        ),
    },
    "report_generation": {
        "en": (
            "{v} a {n} | {v} the {n}",
            "please {v} a {n} | {v} the {n} please",
            "can you {v} the {n}? | could you {v} a {n} for this study?",
            "{n} please | {n} pls | {n}?",
            "I need the {n} | I'd like a {n} | give me the {n}",
            "run chatcad | chatcad-g {n} | use the report generator",
            "{v} a short {n} | {v} a brief {n} for this exam",
            "summarize the study in a {n} | sum up the findings in a {n}",
            "I need a {n} for the referring physician | prepare a {n} for the clinician | {v} a {n} I can send to the referrer",
            "{v} a {n} in the usual format | {v} a complete {n} for this exam",
            "time to {v} the {n} | let's {v} the {n} now | go ahead and {v} a {n}",
            "the {n} for this study, please | could I have the {n}? | may I get a {n} for this exam?",
            "report this study | report this scan for me | please report this exam",
        ),
        "fr": (
            "{v} {n} | {v} {n} svp",
            "peux-tu {vi} {n} ? | merci de {vi} {n}",
            "{n} svp | il me faut {n}",
            "je voudrais {n} | donne-moi {n}",
            "{n} pour cet examen | fais {n}",
            "tu peux me {vi} {n} ? | pourrais-tu {vi} {n} ?",
            "il faut {vi} {n} | on doit {vi} {n}",
            "{v} {n} pour le médecin prescripteur | prépare {n} pour le clinicien",
            "fais le compte rendu de cet examen | compte rendu de l'examen, s'il te plaît",
            "il est temps de {vi} {n} | passons à la rédaction du compte rendu",
            "je peux avoir {n} ? | tu me fais {n} ?",
            "{v} {n} au format habituel | {v} {n} pour cet examen",
            "rédaction du rapport svp | un compte rendu structuré pour cet examen",
        ),
        "de": (
            "{v} {n} | bitte {v} {n}",
            "kannst du {n} {vi}? | könntest du {n} {vi}?",
            "{n} bitte | ich brauche {n}",
            "mach mir {n} | wir brauchen {n}",
            "{n} für diese Untersuchung | erstell mal {n}",
            "würdest du {n} {vi}? | kannst du bitte {n} {vi}?",
            "wir müssen {n} {vi} | du sollst {n} {vi}",
            "{v} {n} für den Zuweiser | bereite {n} für den Kliniker vor",
            "befunde diese Untersuchung | befunde das bitte",
            "Zeit, {n} zu {vi} | jetzt {n} {vi}, bitte",
            "kann ich {n} haben? | machst du mir {n}?",
            "{v} {n} im üblichen Format | {v} {n} für diese Aufnahme",
            "Befundung bitte | einen strukturierten Bericht für diese Untersuchung",
        ),
        "es": (
            "{v} {n} | por favor {v} {n}",
            "¿puedes {vi} {n}? | ¿podrías {vi} {n}?",
            "{n} por favor | necesito {n}",
            "hazme {n} | quiero {n}",
            "{n} para este estudio | haz {n}",
            "¿me puedes {vi} {n}? | ¿serías capaz de {vi} {n}?",
            "hay que {vi} {n} | tienes que {vi} {n}",
            "{v} {n} para el médico remitente | prepara {n} para el clínico",
            "informa este estudio | informa esto, por favor",
            "es hora de {vi} {n} | ahora toca {vi} {n}",
            "¿me das {n}? | ¿me haces {n}?",
            "{v} {n} en el formato habitual | {v} {n} para esta exploración",
            "redacción del informe, por favor | un informe estructurado para este estudio",
        ),
    },
    "retrieval": {
        "en": (
            "{k} {t} | {k} {t}?",
            "please {k} {t} | {k} {t} please",
            "can you {k} {t}? | could you {k} {t} for me?",
            "I want to know: {k} {t} | question: {k} {t}",
            "in general, {k} {t} | {k} {t} in general",
            "look it up: {k} {t} | from the knowledge base, {k} {t}",
            "what is {t}? | what does {t} mean?",
            "what causes {t}? | why does {t} happen?",
            "how is {t} treated? | how do you manage {t}?",
            "tell me what {t} is | explain what {t} means",
            "what do radiologists need to know about {t}? | what should I know about {t}? | teach me about {t}",
            "give me a short overview of {t} | brief summary of {t}, please | overview: {t}",
            "what are the typical symptoms of {t}? | how does {t} present clinically? | what are the complications of {t}?",
            "how is {t} diagnosed? | which tests confirm {t}? | what's the workup for {t}?",
            "search the medical literature for {t} | find references on {t} | any recent papers on {t}?",
            "{k} {t}, in a few sentences | briefly, {k} {t} | I'm a student: {k} {t}",
            "define {t} for me | what's the definition of {t}? | what exactly is {t}?",
            "textbook question: {k} {t} | not about this patient: {k} {t} | general knowledge: {k} {t}",
        ),
        "fr": (
            "{k} {t} | {k} {t} svp",
            "question : {k} {t} | question : qu'est-ce que {t} ?",
            "qu'est-ce que {t} ? | c'est quoi {t} ?",
            "dans la base de connaissances, {k} {t} | cherche : {k} {t}",
            "j'aimerais savoir : {k} {t} | dis-moi : {k} {t}",
            "en général, {k} {t} | de manière générale, qu'est-ce que {t} ?",
            "que sait-on de {t} ? | que dit la littérature sur {t} ?",
            "que faut-il savoir sur {t} ? | explique-moi {t} simplement",
            "en bref, c'est quoi {t} ? | un aperçu sur {t} svp",
            "quels sont les symptômes de {t} ? | quelles sont les complications de {t} ?",
            "comment diagnostique-t-on {t} ? | quel bilan pour {t} ?",
            "cherche dans la littérature : {t} | des références sur {t} ?",
            "{k} {t}, en quelques phrases | en bref, {k} {t}",
            "c'est quoi exactement {t} ? | quelle est la définition de {t} ?",
            "question de cours : {k} {t} | pas sur ce patient, en général : {k} {t}",
        ),
        "de": (
            "{k} {t} | bitte {k} {t}",
            "Frage: {k} {t} | Frage: was ist {t}?",
            "was ist {t}? | was bedeutet {t}?",
            "in der Wissensbasis: {k} {t} | such nach: {k} {t}",
            "ich möchte wissen: {k} {t} | sag mir: {k} {t}",
            "allgemein: {k} {t} | ganz allgemein, was ist {t}?",
            "was weiß man über {t}? | was sagt die Literatur zu {t}?",
            "was muss man über {t} wissen? | erklär mir {t} einfach",
            "kurzer Überblick über {t}, bitte | Überblick: {t}",
            "welche Symptome macht {t}? | welche Komplikationen hat {t}?",
            "wie wird {t} diagnostiziert? | welche Abklärung bei {t}?",
            "such in der Literatur nach {t} | gibt es Referenzen zu {t}?",
            "{k} {t}, in wenigen Sätzen | kurz gesagt: {k} {t}",
            "was genau ist {t}? | wie ist {t} definiert?",
            "Lehrbuchfrage: {k} {t} | nicht zu diesem Patienten, allgemein: {k} {t}",
        ),
        "es": (
            "{k} {t} | por favor {k} {t}",
            "pregunta: {k} {t} | pregunta: ¿qué es {t}?",
            "¿qué es {t}? | ¿qué significa {t}?",
            "en la base de conocimiento, {k} {t} | busca: {k} {t}",
            "quiero saber: {k} {t} | dime: {k} {t}",
            "en general, {k} {t} | en general, ¿qué es {t}?",
            "¿qué se sabe de {t}? | ¿qué dice la literatura sobre {t}?",
            "¿qué hay que saber sobre {t}? | explícame {t} de forma sencilla",
            "resumen breve sobre {t}, por favor | un panorama general sobre {t}",
            "¿cuáles son los síntomas de {t}? | ¿qué complicaciones tiene {t}?",
            "¿cómo se diagnostica {t}? | ¿qué pruebas confirman {t}?",
            "busca en la literatura sobre {t} | ¿hay referencias sobre {t}?",
            "{k} {t}, en pocas frases | en resumen, {k} {t}",
            "¿qué es exactamente {t}? | ¿cuál es la definición de {t}?",
            "pregunta de libro: {k} {t} | no sobre este paciente, en general: {k} {t}",
        ),
    },
    "vqa": {
        "en": (
            "{q} {t} in this image? | {q} {t} here?",
            "{q} {t} on this study? | {q} {t} on this scan?",
            "tell me, {q} {t}? | quick question: {q} {t}?",
            "describe the {s} in this study | what does the {s} look like here? | comment on the {s}",
            "describe this image | what do you see in this image? | what are the main findings here?",
            "what is abnormal in this study? | anything unusual in this image? | what abnormality do you see?",
            "how many slices does this series have? | what is the slice thickness here? | which view is this radiograph?",
            "is the {s} enlarged? | does the {s} look normal? | is the {s} abnormal here?",
            "does this scan show {t}? | does the patient have {t}? | would you say there is {t}?",
            "llava-med: {q} {t}? | ask llava-med: {q} {t}? | visual question: {q} {t}?",
            "how many images are in this series? | what is the pixel spacing here? | what projection is this?",
            "tell me what you see | summarize what this image shows | does this study show {t}?",
            "looking at this scan, {q} {t}? | in this exam, {q} {t}? | on these images, {q} {t}?",
            "any {t} on this study? | any sign of {t} here? | is {t} present in this image?",
            "what's going on with the {s} in this image? | how does the {s} look on this scan? | anything wrong with the {s} here?",
            "based on this image, does the patient have {t}? | from what you can see, is there {t}? | can you rule out {t} on this scan?",
            "what's the most striking finding on this study? | what stands out in this image? | what do these images show?",
        ),
        "fr": (
            "{q} {t} sur cette image ? | {q} {t} ici ?",
            "décris cette image | que vois-tu sur cet examen ? | qu'est-ce qui est anormal ici ?",
            "cet examen montre-t-il {t} ? | le patient a-t-il {t} ?",
            "question : {q} {t} ? | l'examen montre-t-il {t} ?",
            "combien de coupes dans cette série ? | quelle est l'épaisseur de coupe ? | décris {s}",
            "dis-moi : {q} {t} ? | {q} {t} dans cet examen ?",
            "le patient présente-t-il {t} ? | on voit {t} sur ce cliché ?",
            "qu'est-ce que tu vois ici ? | décris {s} sur cette image",
            "sur cet examen, {q} {t} ? | sur ces images, {q} {t} ?",
            "des signes de {t} ici ? | {t} visible sur ce cliché ?",
            "comment apparaît {s} sur cet examen ? | ton avis sur {s} dans cet examen ?",
            "d'après cette image, le patient a-t-il {t} ? | peut-on exclure {t} sur cet examen ?",
            "quelle est l'anomalie principale sur cet examen ? | qu'est-ce qui attire l'œil sur ces images ?",
            "tu vois {t} sur ces coupes ? | est-ce que {t} est présent ici ?",
            "y a-t-il quelque chose d'anormal sur ce cliché ? | quels signes sont visibles sur cette image ?",
        ),
        "de": (
            "{q} {t} in diesem Bild? | {q} {t} hier?",
            "beschreibe dieses Bild | was siehst du in dieser Untersuchung? | was ist hier auffällig?",
            "zeigt das Bild {t}? | hat der Patient {t}?",
            "Frage: {q} {t}? | zeigt die Aufnahme {t}?",
            "wie viele Schichten hat diese Serie? | wie dick sind die Schichten? | beschreibe {s}",
            "sag mir: {q} {t}? | {q} {t} in dieser Untersuchung?",
            "liegt bei dem Patienten {t} vor? | sieht man {t} auf dieser Aufnahme?",
            "was siehst du hier? | beschreibe {s} auf diesem Bild",
            "in dieser Untersuchung, {q} {t}? | auf diesen Bildern: {q} {t}?",
            "Zeichen von {t} hier? | {t} auf dieser Aufnahme sichtbar?",
            "beurteile {s} auf diesem Bild | schau dir {s} auf dieser Aufnahme an: auffällig?",
            "hat der Patient laut diesem Bild {t}? | kann man {t} in dieser Untersuchung ausschließen?",
            "was ist der auffälligste Befund auf diesen Bildern? | was fällt auf dieser Aufnahme auf?",
            "siehst du {t} auf diesen Schichten? | ist hier {t} zu sehen?",
            "ist auf diesem Bild irgendetwas auffällig? | welche Auffälligkeiten sieht man hier?",
        ),
        "es": (
            "¿{q} {t} en esta imagen? | ¿{q} {t} aquí?",
            "describe esta imagen | ¿qué ves en este estudio? | ¿qué es anormal aquí?",
            "¿muestra este estudio {t}? | ¿tiene el paciente {t}?",
            "pregunta: ¿{q} {t}? | ¿el estudio muestra {t}?",
            "¿cuántos cortes tiene esta serie? | ¿qué grosor de corte tiene? | describe {s}",
            "dime: ¿{q} {t}? | ¿{q} {t} en este estudio?",
            "¿presenta el paciente {t}? | ¿se ve {t} en esta placa?",
            "¿qué ves aquí? | describe {s} en esta imagen",
            "en este estudio, ¿{q} {t}? | en estas imágenes, ¿{q} {t}?",
            "¿signos de {t} aquí? | ¿{t} visible en esta placa?",
            "¿cómo se ve {s} en esta imagen? | ¿qué opinas sobre {s} en este estudio?",
            "según esta imagen, ¿el paciente tiene {t}? | ¿se puede descartar {t} en este estudio?",
            "¿cuál es el hallazgo principal en estas imágenes? | ¿qué llama la atención en este estudio?",
            "¿ves {t} en estos cortes? | ¿está presente {t} aquí?",
            "¿hay algo anormal en esta placa? | ¿qué signos se ven en esta imagen?",
        ),
    },
    "greeting": {
        "en": (
            "hi | hello | hello there!",
            "thanks | thank you! | great, thanks",
            "good morning | good evening | hey",
            "who are you? | what are you? | are you a bot?",
            "ok | cool | got it",
            "bye | see you | good night",
            "hey there | hiya | yo",
            "thanks a lot, that's all | perfect, thank you | that's it for now, thanks",
            "how are you? | how's it going? | nice to meet you",
            "what can you do? | what are you able to do? | who made you?",
            "good afternoon | greetings | morning!",
            "see you tomorrow | have a nice day | talk later",
        ),
        "fr": ("bonjour | salut | bonsoir", "merci | merci beaucoup | super, merci", "qui es-tu ? | au revoir | d'accord",
               "coucou | salut à toi | bonne journée",
               "bonjour à tous | hello | re-bonjour", "merci, c'est tout | parfait, merci | merci pour ton aide",
               "comment ça va ? | ça va ? | enchanté", "que sais-tu faire ? | tu sers à quoi ?",
               "bon après-midi | bonne soirée", "à demain | à plus tard | à bientôt", "ok | d'accord, merci | très bien",
               "t'es qui ? | tu es un robot ?"),
        "de": ("hallo | guten Morgen | servus", "danke | vielen Dank | super, danke", "wer bist du? | tschüss | alles klar",
               "moin | hi | schönen Tag",
               "hallo zusammen | hi du | grüß Gott", "danke, das war's | perfekt, danke | danke für die Hilfe",
               "wie geht's? | alles gut? | freut mich", "was kannst du? | wofür bist du da?", "guten Tag | guten Abend",
               "bis morgen | bis später | ciao", "ok | in Ordnung, danke | passt",
               "bist du ein Bot? | wer hat dich gebaut?"),
        "es": ("hola | buenos días | buenas tardes", "gracias | muchas gracias | genial, gracias", "¿quién eres? | adiós | vale",
               "buenas | qué tal | hasta luego",
               "hola a todos | buenas noches | hey", "gracias, eso es todo | perfecto, gracias | gracias por la ayuda",
               "¿cómo estás? | ¿qué tal estás? | encantado", "¿qué sabes hacer? | ¿para qué sirves?", "buen día | saludos",
               "hasta mañana | nos vemos | chao", "ok | de acuerdo, gracias | perfecto", "¿eres un bot? | ¿quién te hizo?"),
    },
    "off_topic": {
        "en": (
            "what's the weather today? | will it rain tomorrow? | how hot is it outside?",
            "tell me a joke | tell me something funny | make me laugh",
            "book a meeting room for 3pm | schedule a meeting with the team | move my 2pm meeting",
            "order lunch for the team | where can I get coffee? | order a pizza",
            "what time is it? | what's the date today? | what day is it?",
            "write a poem about spring | write a song about the sea | tell me a story",
            "how do I reset my password? | my printer does not work | call the IT helpdesk",
            "print the worklist | send an email to the secretary | what's the wifi password?",
            "what's the capital of France? | who won the football game? | recommend a movie",
            "translate 'good night' into Italian | what's 17 times 23? | convert 5 miles to km",
            "what's the best restaurant near the hospital? | where can I park? | when does the cafeteria close?",
            "what's on my schedule tomorrow? | remind me to call the lab at 4 | set a timer for 10 minutes",
            "explain how a blockchain works | write python code to sort a list | what's the share price of Siemens?",
        ),
        "fr": (
            "quel temps fait-il ? | va-t-il pleuvoir ?",
            "raconte une blague | raconte une histoire",
            "quelle heure est-il ? | quel jour sommes-nous ?",
            "réserve une salle | commande le déjeuner | envoie un e-mail",
            "écris un poème | recommande un film | quelle est la capitale de l'Italie ?",
            "où est la cafétéria ? | où puis-je me garer ?",
            "rappelle-moi d'appeler le labo à 16 h | mets un minuteur de 10 minutes",
            "comment réinitialiser mon mot de passe ? | l'imprimante ne marche pas",
            "qui a gagné le match hier ? | quel est le score du match ?",
            "traduis 'bonne nuit' en anglais | combien font 17 fois 23 ?",
            "écris un programme en python | explique-moi le fonctionnement d'une blockchain",
            "quel est mon planning demain ? | annule ma réunion de 14 h",
        ),
        "de": (
            "wie wird das Wetter? | regnet es morgen?",
            "erzähl einen Witz | erzähl eine Geschichte",
            "wie spät ist es? | welcher Tag ist heute?",
            "buche einen Raum | bestell das Mittagessen | schick eine E-Mail",
            "schreib ein Gedicht | empfiehl einen Film | was ist die Hauptstadt von Italien?",
            "wo ist die Cafeteria? | wo kann ich parken?",
            "erinnere mich, um 16 Uhr das Labor anzurufen | stell einen Timer auf 10 Minuten",
            "wie setze ich mein Passwort zurück? | der Drucker geht nicht",
            "wer hat gestern das Spiel gewonnen? | wie steht es im Spiel?",
            "übersetze 'gute Nacht' ins Englische | was ist 17 mal 23?",
            "schreib ein Python-Programm | erklär mir, wie eine Blockchain funktioniert",
            "was steht morgen in meinem Kalender? | sag mein Meeting um 14 Uhr ab",
        ),
        "es": (
            "¿qué tiempo hace? | ¿va a llover?",
            "cuéntame un chiste | cuéntame una historia",
            "¿qué hora es? | ¿qué día es hoy?",
            "reserva una sala | pide la comida | envía un correo",
            "escribe un poema | recomiéndame una película | ¿cuál es la capital de Italia?",
            "¿dónde está la cafetería? | ¿dónde puedo aparcar?",
            "recuérdame llamar al laboratorio a las 4 | pon un temporizador de 10 minutos",
            "¿cómo restablezco mi contraseña? | la impresora no funciona",
            "¿quién ganó el partido ayer? | ¿cómo va el partido?",
            "traduce 'buenas noches' al inglés | ¿cuánto es 17 por 23?",
            "escribe un programa en python | explícame cómo funciona una blockchain",
            "¿qué tengo mañana en la agenda? | cancela mi reunión de las 2",
        ),
    },
    "clarify": {
        "en": (
            "check this | look at this | can you check it?",
            "help | help me | need help with this one",
            "do your thing | process it | go",
            "analyse | analyze this please | what do you think?",
            "? | ... | hmm",
            "do the usual | the same as last time | run it",
            "take care of this study | have a look | see what you can do",
            "can you handle this? | deal with this one | do something with it",
            "what about this one? | and this? | next one",
            "please look into it | can you take a look? | check it out",
            "do whatever is needed | whatever you think is best | your call",
            "urgent case, do something | this patient needs attention | help with this scan",
            "process this study | run the analysis | start",
        ),
        "fr": ("regarde ça | aide-moi | tu peux vérifier ?", "analyse | qu'en penses-tu ? | fais le nécessaire",
               "fais quelque chose | occupe-toi de ça | jette un œil", "alors ? | et maintenant ? | vas-y",
               "et celui-ci ? | et ça ? | le suivant", "tu peux jeter un coup d'œil ? | vérifie ça",
               "fais ce qu'il faut | comme tu veux | à toi de voir",
               "cas urgent, fais quelque chose | aide-moi avec cet examen", "traite cet examen | lance l'analyse | démarre",
               "bof | ?? | euh", "comme d'habitude | pareil que la dernière fois | la même chose",
               "regarde cet examen stp | qu'est-ce que tu en dis ?"),
        "de": ("schau dir das an | hilf mir | kannst du das prüfen?", "analysieren | was meinst du? | mach mal",
               "kümmere dich darum | mach was damit | wirf einen Blick darauf", "und jetzt? | los geht's | na?",
               "und das hier? | und der? | der Nächste", "kannst du mal draufschauen? | prüf das mal",
               "mach, was nötig ist | wie du meinst | entscheide du",
               "dringender Fall, mach was | hilf mir mit dieser Untersuchung",
               "verarbeite diese Untersuchung | starte die Analyse | starte", "hm | ?? | äh",
               "wie immer | wie beim letzten Mal | das Übliche", "schau dir diese Untersuchung an | was sagst du dazu?"),
        "es": ("mira esto | ayúdame | ¿puedes revisarlo?", "analiza | ¿qué opinas? | haz lo de siempre",
               "encárgate de esto | haz algo con esto | échale un vistazo", "¿y ahora? | adelante | ¿entonces?",
               "¿y este? | ¿y esto? | el siguiente", "¿le echas un ojo? | revisa esto",
               "haz lo que haga falta | como quieras | tú decides", "caso urgente, haz algo | ayúdame con este estudio",
               "procesa este estudio | lanza el análisis | empieza", "mmm | ?? | eh",
               "como siempre | igual que la última vez | lo mismo", "mira este estudio, por favor | ¿qué me dices?"),
    },
}  # fmt: skip

#: More sentence frames, for training only (``TRAINING_ONLY``): written after the test split was fixed, so
#: that adding them leaves every split of ``PHRASINGS`` (and so the held-out test requests) as it was. They
#: are new frames around the same keywords, written for the kinds of request the adapter confused most
#: (a tool planned where none applies, image questions against knowledge questions, two explicit steps
#: against grounded segmentation), not copies of held-out frames.
TRAINING_PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "grounded_segmentation": {
        "en": (
            "{s}: {v} | {s}: {v}, please",
            "in a single step, {v} the {s} | in one go, {v} the {s} | just {v} the {s}, no boxes needed",
            "I'm planning surgery, {v} the {s} | for volumetry, {v} the {s} | {v} the {s} so we can measure it",
            "what's the volume of the {s}? make a {n} | {n} + volume for the {s} | the {s} - {n} and volume",
        ),
        "fr": ("{s} : {n} svp | {s} : à {vi} en une fois", "en une seule étape, {v} {s} | juste {vi} {s}, sans boîtes",
               "pour la volumétrie, {v} {s} | {v} {s} pour qu'on puisse le mesurer"),
        "de": ("{s}: {n}, bitte | {s}: in einem Rutsch {vi}", "in einem Schritt {s} {vi} | einfach nur {s} {vi}, ohne Boxen",
               "für die Volumetrie {s} {vi} | {v} {s}, damit wir es messen können"),
        "es": ("{s}: {n}, gracias | {s}: {vi} de una vez", "en un solo paso, {v} {s} | solo {vi} {s}, sin cajas",
               "para la volumetría, {v} {s} | {v} {s} para poder medirlo"),
    },
    "grounding": {
        "en": (
            "just the box for the {s}, no mask | only {v} the {s}, I don't need a segmentation | boxes only: {s}",
            "{s} - where? | which slice shows the {s}? give me a box",
            "could you {v} every {s} on this study? | {v} all the {s} you see | {v} the {s}, one box each",
        ),
        "fr": ("juste la boîte pour {s}, pas de masque | seulement {vi} {s}, pas de segmentation",
               "{s}, c'est où ? | {s} : où ? | {n} de {s} ?", "{v} tous les {s} visibles | {v} {s}, une boîte chacun"),
        "de": ("nur die Box für {s}, keine Maske | nur {s} {vi}, keine Segmentierung",
               "{s}: wo? | {n} von {s}?", "{v} alle sichtbaren {s} | {v} {s}, je eine Box"),
        "es": ("solo la caja de {s}, sin máscara | solo {vi} {s}, sin segmentación",
               "¿dónde está {s}? | {s}: ¿dónde? | ¿{n} de {s}?", "{v} todos los {s} visibles | {v} {s}, una caja cada uno"),
    },
    "two_step": {
        "en": (
            "{gv} the {s} with grounding dino, and then medsam | grounding dino for the {s}, afterwards medsam on its boxes",
            "not grounded segmentation: {gv} the {s} first, then segment separately | separately: {gv} the {s}, then segment the boxes",
            "detection first ({s}), segmentation second | boxes for the {s}, then a medsam mask per box",
        ),
        "fr": ("{gv} {s} avec grounding dino, puis medsam | grounding dino pour {s}, ensuite medsam sur ses boîtes",
               "séparément : {gvi} {s} d'abord, puis segmenter les boîtes | d'abord la détection de {s}, ensuite la segmentation"),
        "de": ("{gv} {s} mit Grounding DINO, danach MedSAM | Grounding DINO für {s}, anschließend MedSAM auf die Boxen",
               "getrennt: zuerst {s} {gvi}, dann die Boxen segmentieren | erst die Detektion von {s}, dann die Segmentierung"),
        "es": ("{gv} {s} con grounding dino y después medsam | grounding dino para {s}, luego medsam en sus cajas",
               "por separado: primero {gvi} {s}, luego segmentar las cajas | primero la detección de {s}, después la segmentación"),
    },
    "classification": {
        "en": ("label this picture | {n} of this picture? | sort this image into a category",
               "what am I looking at: which {n}? | just the {n}, nothing else"),
        "fr": ("quelle est {n} de cet examen ? | {v} cette image stp", "c'est quel type d'examen ? | {n} de ce cliché ?"),
        "de": ("welche Art von Aufnahme ist das? | {v} diese Aufnahme", "was zeigt das Bild für ein Organ? | {n} der Aufnahme?"),
        "es": ("¿qué tipo de estudio es este? | {v} esta placa", "¿qué órgano muestra la imagen? | ¿{n} de esta imagen?"),
    },
    "retrieval": {
        "en": (
            "{t} - {k}? | {t}: {k}? | about {t}: {k}",
            "medical knowledge question, unrelated to the images: {k} {t} | I'm curious, {k} {t}",
            "{k} {t} (general question) | what's {t} again?",
        ),
        "fr": ("{t} : {k} ? | à propos de {t} : {k}", "question générale, pas sur l'image : {k} {t} | rappelle-moi ce qu'est {t}",
               "je ne sais plus ce qu'est {t} | {k} {t} (question générale)"),
        "de": ("{t}: {k}? | zu {t}: {k}", "allgemeine Frage, nicht zum Bild: {k} {t} | erinnere mich, was {t} ist",
               "ich weiß nicht mehr, was {t} ist | {k} {t} (allgemeine Frage)"),
        "es": ("{t}: ¿{k}? | sobre {t}: {k}", "pregunta general, no sobre la imagen: {k} {t} | recuérdame qué es {t}",
               "no recuerdo qué es {t} | {k} {t} (pregunta general)"),
    },
    "vqa": {
        "en": (
            "look at the image: {q} {t}? | in the picture, {q} {t}? | on the images I sent, {q} {t}?",
            "give me a description of the {s} on this scan | the {s} here - how does it look?",
            "what's visible in this study? | which structures can you see here?",
            "does this image show {t} or not? | yes or no: {t} on this scan? | true or false, {t} on this image",
        ),
        "fr": ("regarde l'image : {q} {t} ? | sur les images envoyées, {q} {t} ?", "donne-moi une description de {s} ici",
               "que voit-on sur cet examen ? | quelles structures vois-tu ici ?", "oui ou non : {t} sur cette image ?"),
        "de": ("schau aufs Bild: {q} {t}? | auf den geschickten Bildern, {q} {t}?", "gib mir eine Beschreibung von {s} hier",
               "was ist auf dieser Untersuchung zu sehen? | welche Strukturen siehst du hier?", "ja oder nein: {t} auf diesem Bild?"),
        "es": ("mira la imagen: ¿{q} {t}? | en las imágenes enviadas, ¿{q} {t}?", "dame una descripción de {s} aquí",
               "¿qué se ve en este estudio? | ¿qué estructuras ves aquí?", "sí o no: ¿{t} en esta imagen?"),
    },
    "greeting": {
        "en": ("hello, anyone there? | hi, are you online? | ping", "thank you so much | cheers | much appreciated"),
        "fr": ("il y a quelqu'un ? | tu es là ? | allô", "merci mille fois | c'est gentil"),
        "de": ("ist da jemand? | bist du da? | hallo?", "tausend Dank | sehr nett, danke"),
        "es": ("¿hay alguien? | ¿estás ahí? | ¿hola?", "mil gracias | muy amable"),
    },
    "off_topic": {
        "en": (
            "who is the president of the United States? | how tall is Mount Everest? | how many planets are there?",
            "I'm hungry | I'm bored | I'm tired today",
            "book me a taxi | call my wife | play some music",
            "how do I fill in my timesheet? | when is my next holiday? | request a day off",
        ),
        "fr": ("qui est le président de la France ? | quelle est la hauteur de l'Everest ?", "j'ai faim | je m'ennuie",
               "appelle un taxi | mets de la musique", "comment remplir ma feuille de temps ? | je veux poser un jour de congé"),
        "de": ("wer ist der Bundeskanzler? | wie hoch ist der Mount Everest?", "ich habe Hunger | mir ist langweilig",
               "ruf mir ein Taxi | spiel Musik", "wie fülle ich meinen Stundenzettel aus? | ich möchte einen Tag Urlaub"),
        "es": ("¿quién es el presidente de España? | ¿cuánto mide el Everest?", "tengo hambre | estoy aburrido",
               "pídeme un taxi | pon música", "¿cómo relleno la hoja de horas? | quiero pedir un día libre"),
    },
    "clarify": {
        "en": ("this one please | this study | here you go", "your opinion? | thoughts? | so?"),
        "fr": ("celui-ci stp | cet examen | voilà", "ton avis ? | des idées ?"),
        "de": ("diese hier bitte | die hier | hier", "deine Meinung? | Ideen?"),
        "es": ("este por favor | este de aquí | aquí tienes", "¿tu opinión? | ¿ideas?"),
    },
}  # fmt: skip

#: clauses that combine into requests for several tools ({a} and {b} of CONNECTORS); they are vocabulary
#: (a keyword and its object), shared by every split; the connectors are the held-out phrasings
CLAUSES: dict[str, dict[str, tuple[str, ...]]] = {
    "grounded_segmentation": {
        "en": ("{v} the {s}", "give me a {n} of the {s}"),
        "fr": ("{v} {s}",),
        "de": ("{v} {s}",),
        "es": ("{v} {s}",),
    },
    "grounding": {
        "en": ("{v} the {s}", "show me where the {s} is"),
        "fr": ("{v} {s}", "montre-moi où est {s}"),
        "de": ("{v} {s}", "zeig mir, wo {s} liegt"),
        "es": ("{v} {s}", "muéstrame dónde está {s}"),
    },
    "classification": {
        "en": ("{v} the image", "tell me the {n}", "{v} it as {labels}"),
        "fr": ("{v} l'image", "donne {n}", "{v} l'image : {labels}"),
        "de": ("{v} das Bild", "nenne {n}", "{v} das Bild als {labels}"),
        "es": ("{v} la imagen", "dime {n}", "{v} la imagen como {labels}"),
    },
    "report_generation": {"en": ("{v} a {n}", "{v} the {n}"), "fr": ("{v} {n}",), "de": ("{v} {n}",), "es": ("{v} {n}",)},
    "vqa": {
        "en": ("tell me if there is {t}", "check whether {t} is present", "describe what you see", "tell me whether you see {t}"),
        "fr": ("dis-moi s'il y a {t}", "décris ce que tu vois", "vérifie s'il y a {t}"),
        "de": ("sag mir, ob {t} vorliegt", "beschreibe, was du siehst", "prüfe, ob {t} zu sehen ist"),
        "es": ("dime si hay {t}", "describe lo que ves", "comprueba si hay {t}"),
    },
    "retrieval": {
        "en": ("{k} {t}", "explain what {t} is"),
        "fr": ("{k} {t}", "explique ce qu'est {t}"),
        "de": ("{k} {t}", "erkläre, was {t} ist"),
        "es": ("{k} {t}", "explica qué es {t}"),
    },
}  # fmt: skip
CONNECTORS: dict[str, tuple[str, ...]] = {
    "en": (
        "{a} and {b} | {a} & {b}",
        "{a}, then {b} | {a} then {b}",
        "first {a}, then {b} | first {a}; then {b}",
        "{a}; also {b} | {a}. also {b}",
        "please {a} and {b} | could you {a} and {b}?",
        "{a} + {b} | {a} / {b}",
        "{a}. afterwards, {b} | {a} and afterwards {b}",
        "{a}, and after that {b} | {a}. after that, {b}",
        "{a} and then {b} | {a}, and then {b}",
        "{a}, plus {b} | {a}, and also {b}",
        "{a}. next, {b} | {a}, next {b}",
        "{a} - {b} | {a}; {b}",
        "I'd like you to {a} and also {b} | can you {a} and then {b}?",
        "{a} as well as {b} | {a}, as well as {b}",
        "{a}, and when you're done, {b} | {a}; when finished, {b}",
    ),
    "fr": ("{a} et {b} | {a} et aussi {b}", "{a}, puis {b} | {a} puis {b}", "d'abord {a}, ensuite {b} | {a}, ensuite {b}",
           "{a} ; aussi {b} | {a}, puis aussi {b}", "{a}, après ça {b} | {a} et ensuite {b}",
           "{a}. ensuite, {b} | {a}, ensuite {b}", "{a} - {b} | {a} ; {b}",
           "merci de : {a}, et {b} | peux-tu : {a}, puis {b} ?", "{a} + {b} | {a} / {b}",
           "{a}, et quand c'est fait, {b} | {a} ; une fois terminé, {b}", "{a}, et {b} aussi | {a}, {b} également",
           "{a}, puis dans la foulée {b} | {a}, et enfin {b}"),
    "de": ("{a} und {b} | {a} und außerdem {b}", "{a}, dann {b} | {a} dann {b}", "zuerst {a}, danach {b} | {a}, danach {b}",
           "{a}; außerdem {b} | {a}, dann noch {b}", "{a} und danach {b} | {a}, anschließend {b}",
           "{a}. Als Nächstes {b} | {a}, als Nächstes {b}", "{a} - {b} | {a}; {b}",
           "bitte: {a}, und {b} | kannst du: {a}, dann {b}?", "{a} + {b} | {a} / {b}",
           "{a}, und wenn das fertig ist, {b} | {a}; danach bitte {b}", "{a}, und {b} auch | {a}, {b} ebenfalls",
           "{a}, zum Schluss {b} | {a}, und zuletzt {b}"),
    "es": ("{a} y {b} | {a} y también {b}", "{a}, luego {b} | {a} luego {b}", "primero {a}, después {b} | {a}, después {b}",
           "{a}; también {b} | {a}, luego también {b}", "{a} y después {b} | {a}, y luego {b}",
           "{a}. a continuación, {b} | {a}, a continuación {b}", "{a} - {b} | {a}; {b}",
           "por favor: {a}, y {b} | ¿puedes: {a}, luego {b}?", "{a} + {b} | {a} / {b}",
           "{a}, y cuando termines, {b} | {a}; una vez hecho, {b}", "{a}, y {b} también | {a}, {b} igualmente",
           "{a}, y por último {b} | {a}, y al final {b}"),
}  # fmt: skip
#: the pairs of intents a multi-tool request combines (the first runs first)
COMBINATIONS = (
    ("grounded_segmentation", "report_generation"),
    ("grounded_segmentation", "vqa"),
    ("grounded_segmentation", "classification"),
    ("grounded_segmentation", "retrieval"),
    ("grounding", "report_generation"),
    ("grounding", "vqa"),
    ("grounding", "grounded_segmentation"),
    ("classification", "report_generation"),
    ("classification", "vqa"),
    ("vqa", "retrieval"),
    ("grounded_segmentation", "grounding"),
    ("classification", "grounded_segmentation"),
)
#: how often each kind of request is drawn
INTENT_WEIGHTS = {
    "grounded_segmentation": 0.17,
    "grounding": 0.11,
    "two_step": 0.04,
    "segmentation": 0.04,
    "classification": 0.06,
    "classification_labels": 0.05,
    "report_generation": 0.07,
    "retrieval": 0.09,
    "vqa": 0.09,
    "greeting": 0.03,
    "off_topic": 0.03,
    "clarify": 0.05,
    "multi": 0.15,
}
_NEEDS_STRUCTURE = {"grounded_segmentation", "grounding", "two_step", "segmentation"}

# ------------------------------------------------------------------------------------------------ families


@dataclass(frozen=True)
class Family:
    """One way of asking: a few variants of a template, all in one split."""

    id: str
    kind: str  # an intent of PHRASINGS, "clause:<intent>" or "connector"
    language: str
    templates: tuple[str, ...]


def _families(
    table: dict[str, dict[str, tuple[str, ...]]], kind_prefix: str = "", id_prefix: str = ""
) -> list[Family]:
    found = []
    for intent, languages in table.items():
        for language, rows in languages.items():
            for index, row in enumerate(rows):
                kind = f"{kind_prefix}{intent}"
                templates = tuple(part.strip() for part in row.split(" | "))
                found.append(Family(f"{id_prefix}{kind}.{language}.{index}", kind, language, templates))
    return found


#: the id prefix of the families of TRAINING_PHRASINGS, which are always in the train split
TRAINING_ONLY = "train-only:"


def all_families() -> list[Family]:
    """Every family: requests, training-only requests, multi-tool clauses and connectors."""
    families = (
        _families(PHRASINGS)
        + _families(TRAINING_PHRASINGS, id_prefix=TRAINING_ONLY)
        + _families(CLAUSES, "clause:")
    )
    for language, rows in CONNECTORS.items():
        for index, row in enumerate(rows):
            families.append(
                Family(
                    f"connector.{language}.{index}",
                    "connector",
                    language,
                    tuple(p.strip() for p in row.split(" | ")),
                )
            )
    return families


def _stable_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


SHARED = "shared"


def family_splits() -> dict[str, str]:
    """``{family id: split}``: per kind and language, a fifth of the families (at least one of three or
    more) go to test and one of six or more to val; the choice is a fixed hash, not the order written.
    Clauses are vocabulary, ``SHARED`` by every split (a multi-tool request's connector is held out);
    ``TRAINING_PHRASINGS`` are train only and do not change how the others split."""
    groups: dict[tuple[str, str], list[Family]] = {}
    splits = {}
    for family in all_families():
        if family.kind.startswith("clause:"):
            splits[family.id] = SHARED
        elif family.id.startswith(TRAINING_ONLY):
            splits[family.id] = "train"
        else:
            groups.setdefault((family.kind, family.language), []).append(family)
    for members in groups.values():
        ordered = sorted(members, key=lambda f: _stable_key(f.id))
        n_test = max(1, round(len(ordered) * 0.2)) if len(ordered) >= 3 else 0
        n_val = 1 if len(ordered) >= 6 else 0
        for index, family in enumerate(ordered):
            split = "test" if index < n_test else "val" if index < n_test + n_val else "train"
            splits[family.id] = split
    return splits


# ---------------------------------------------------------------------------------------------- plans


@dataclass
class Part:
    """One thing a request asks for."""

    intent: str
    structures: list[str] = field(default_factory=list)  # canonical prompts
    labels: list[str] = field(default_factory=list)  # classification candidates, as written
    params: dict[str, Any] = field(default_factory=dict)  # given boxes or points


#: the tools each intent needs, in order
INTENT_TOOLS = {
    "grounded_segmentation": ("grounded_segmentation",),
    "grounding": ("grounding",),
    "two_step": ("grounding", "segmentation"),
    "segmentation": ("segmentation",),
    "classification": ("classification",),
    "classification_labels": ("classification",),
    "report_generation": ("report_generation",),
    "retrieval": ("retrieval",),
    "vqa": ("vqa",),
}
GREETING_VALUE = "Hello! Tell me what to do with this study: segment or locate a structure, classify it, write a report or answer a question."
OFF_TOPIC_VALUE = "I only plan imaging tools: segmentation, localisation, classification, reports and answers about studies."
CLARIFY_VALUE = "What should I do with this study: segment or locate a structure, classify the image, write a report or answer a question?"


def _names(structures: Sequence[str]) -> str:
    return (
        " and ".join(structures)
        if len(structures) <= 2
        else ", ".join(structures[:-1]) + " and " + structures[-1]
    )


def _phrase(part: Part) -> str:
    """What the part asks, in a few words for the plan's thoughts."""
    names = _names(part.structures)
    if part.intent == "grounded_segmentation":
        return f"segment {names}"
    if part.intent == "grounding":
        return f"locate {names}"
    if part.intent == "two_step":
        return f"box {names}, then segment the boxes"
    if part.intent == "segmentation":
        return f"segment {names} from the given {'box' if 'boxes' in part.params else 'point'}"
    if part.intent == "classification_labels":
        return f"choose between {', '.join(part.labels)}"
    return {
        "classification": "classify the image",
        "report_generation": "write a report",
        "retrieval": "answer from the knowledge base",
        "vqa": "answer a question about this study",
    }[part.intent]


def _actions(part: Part, first_index: int) -> list[Action]:
    if part.intent in ("grounded_segmentation", "grounding"):
        return [Action(part.intent, {"prompts": list(part.structures)})]
    if part.intent == "two_step":
        return [
            Action("grounding", {"prompts": list(part.structures)}),
            Action("segmentation", {"boxes": f"${first_index}.boxes"}),
        ]
    if part.intent == "segmentation":
        return [Action("segmentation", dict(part.params))]
    if part.intent == "classification_labels":
        return [Action("classification", {"labels": list(part.labels)})]
    return [Action(INTENT_TOOLS[part.intent][0], {})]


def build_plan(parts: Sequence[Part], modality: str, offered: Iterable[str]) -> Plan:
    """The plan a request deserves, given the tools offered: the parts whose tools are all offered run in
    order; the others are named in the thoughts. No part runnable: no actions, and the value says why."""
    offered = set(offered)
    where = f"for {modality}" if modality else "here"
    if len(parts) == 1 and parts[0].intent in ("greeting", "off_topic", "clarify"):
        intent = parts[0].intent
        thoughts = {
            "greeting": "A greeting; no tool is needed.",
            "off_topic": "Not an imaging task; no tool is needed.",
            "clarify": "The request is unclear; ask what is wanted.",
        }[intent]
        value = {"greeting": GREETING_VALUE, "off_topic": OFF_TOPIC_VALUE, "clarify": CLARIFY_VALUE}[intent]
        return Plan(thoughts, (), value)
    actions: list[Action] = []
    notes: list[str] = []
    missing: list[str] = []
    for part in parts:
        lacking = [tool for tool in INTENT_TOOLS[part.intent] if tool not in offered]
        if lacking:
            notes.append(f"{_phrase(part)} needs {lacking[0]}, not offered {where}")
            missing.append(lacking[0])
            continue
        notes.append(_phrase(part))
        actions.extend(_actions(part, len(actions)))
    thoughts = "; then ".join(notes)
    thoughts = thoughts[0].upper() + thoughts[1:] + "."
    if actions:
        return Plan(thoughts, tuple(actions), plan_value(actions))
    study = f"{modality} studies" if modality else "this study"
    return Plan(
        thoughts,
        (),
        f"I cannot do that here: {', '.join(dict.fromkeys(missing))} is not available for {study}.",
    )


def exemplar_plans() -> list[Plan]:
    """A plan of every shape the planner writes: drafts for the decoder's speculation."""
    everything = list(TASKS)
    examples = [
        [Part("grounded_segmentation", ["left lung", "right lung"])],
        [Part("grounding", ["liver"])],
        [Part("two_step", ["kidneys"])],
        [
            Part(
                "segmentation",
                ["liver"],
                params={"boxes": [{"label": "liver", "frame": 0, "xyxy": [1, 2, 3, 4]}]},
            )
        ],
        [Part("segmentation", ["liver"], params={"points": [{"label": "liver", "frame": 0, "xy": [1, 2]}]})],
        [Part("classification_labels", labels=["normal", "abnormal"])],
        [Part("classification"), Part("report_generation")],
        [Part("vqa"), Part("retrieval")],
        [Part("greeting")],
        [Part("off_topic")],
        [Part("clarify")],
    ]
    plans = [build_plan(parts, "CT", everything) for parts in examples]
    plans.append(build_plan([Part("grounded_segmentation", ["brain tumor"])], "MR", ["vqa"]))
    return plans


# ------------------------------------------------------------------------------------------ sampling


@dataclass(frozen=True)
class Example:
    """One generated request and the plan it deserves."""

    id: str
    split: str
    family: str
    language: str
    instruction: str
    modality: str
    body_part: str
    study_description: str
    series_description: str
    slices: int
    offered: tuple[str, ...]
    plan: Plan

    @property
    def expected_tools(self) -> list[str]:
        return list(dict.fromkeys(action.API_name for action in self.plan.actions))

    @property
    def expected_prompts(self) -> list[str]:
        from agent_core.planner.llm import action_targets

        found: list[str] = []
        for action in self.plan.actions:
            found.extend(action_targets(action))
        return normalise_prompts(found) if found else []


_NEIGHBOURS = "qwertyuiopasdfghjklzxcvbnm"


def misspell(text: str, rng: random.Random, edits: int = 1) -> str:
    """``text`` with ``edits`` typing slips (a letter dropped, doubled, swapped or mistyped) in long words."""
    words = text.split(" ")
    candidates = [i for i, word in enumerate(words) if len(word) >= 5 and word.isalpha()]
    for index in rng.sample(candidates, min(edits, len(candidates))):
        word = words[index]
        at = rng.randrange(1, len(word) - 1)
        slip = rng.choice(("drop", "double", "swap", "mistype"))
        if slip == "drop":
            word = word[:at] + word[at + 1 :]
        elif slip == "double":
            word = word[:at] + word[at] + word[at:]
        elif slip == "swap":
            word = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
        else:
            word = word[:at] + rng.choice(_NEIGHBOURS) + word[at + 1 :]
        words[index] = word
    return " ".join(words)


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


#: words around a request that do not change what it asks, per language
OPENERS = {
    "en": ("please ", "hey, ", "ok, ", "hi, ", "quick one: ", "for this study, ", "urgent: ", "when you can, ", "dr. lee asks: "),
    "fr": ("s'il te plaît, ", "bonjour, ", "urgent : ", "pour cet examen, ", "vite : "),
    "de": ("bitte ", "hallo, ", "dringend: ", "für diese Untersuchung: ", "kurz: "),
    "es": ("por favor, ", "hola, ", "urgente: ", "para este estudio, ", "rápido: "),
}  # fmt: skip
CLOSERS = {
    "en": (" please", " thanks", " asap", " for the tumour board", " for me", " when you have time", " thx", " (urgent)"),
    "fr": (" svp", " merci", " stp", " rapidement", " pour la RCP"),
    "de": (" bitte", " danke", " schnell", " für die Tumorkonferenz", " bitte zügig"),
    "es": (" por favor", " gracias", " rápido", " para el comité", " cuanto antes"),
}  # fmt: skip


#: openers that tie a request to the study: not put before a knowledge question (retrieval), which they
#: would make read as a question about the images (vqa)
STUDY_OPENERS = frozenset(
    ("for this study, ", "pour cet examen, ", "für diese Untersuchung: ", "para este estudio, ")
)


def _vary(text: str, language: str, rng: random.Random, knowledge: bool = False) -> str:
    """Typing habits: words around the request, slips, no accents, capitals, punctuation."""
    if rng.random() < 0.2:
        openers = [o for o in OPENERS[language] if not (knowledge and o in STUDY_OPENERS)]
        text = rng.choice(openers) + text
    if rng.random() < 0.2 and text and text[-1] not in "?":
        text = text.rstrip(".!") + rng.choice(CLOSERS[language])
    roll = rng.random()
    if roll < 0.12:
        text = misspell(text, rng, 1 if rng.random() < 0.75 else 2)
    if language != "en" and rng.random() < 0.25:
        text = strip_accents(text)
    roll = rng.random()
    if roll < 0.05:
        text = text.upper()
    elif roll < 0.35:
        text = text[:1].upper() + text[1:]
    elif roll < 0.45:
        text = text.lower()
    if rng.random() < 0.15 and text and text[-1] not in "?.!":
        text += rng.choice((".", "!", " please", " pls", " thx"))
    return text


#: frame words that are never dropped: without them a request asks the opposite
_NEGATIONS = frozenset(
    ("not", "no", "can't", "don't", "pas", "ne", "n'arrive", "nicht", "kein", "keine", "sin", "nunca")
)


#: the slots that carry what a request asks (KEYWORDS): a frame without one says it in its own words
_KEYWORD_SLOTS = re.compile(r"\{(?:v|vi|n|k|q|gv|gvi)\}")


def drop_frame_words(template: str, rng: random.Random) -> str:
    """``template`` without one word of its frame (two when it has four or more): slots (``{v}``,
    ``{s}``...) stay. A frame is returned unchanged when no keyword slot says what it asks (its own words
    do), when it holds a negation, or when it has fewer than two plain words."""
    tokens = template.split(" ")
    if not _KEYWORD_SLOTS.search(template):
        return template
    if any(token.strip("?!.,:;¿¡").lower() in _NEGATIONS for token in tokens):
        return template
    plain = [i for i, token in enumerate(tokens) if "{" not in token and any(c.isalpha() for c in token)]
    if len(plain) < 2:
        return template
    dropped = set(rng.sample(plain, 2 if len(plain) >= 4 and rng.random() < 0.3 else 1))
    return " ".join(token for i, token in enumerate(tokens) if i not in dropped)


class Generator:
    """Draws requests of one split; deterministic for a seed."""

    def __init__(
        self,
        split: str,
        cards: Sequence[ToolCard],
        seed: int = 0,
        *,
        vary_tools: bool | None = None,
        frame_dropout: float = 0.0,
        training_frames: bool = False,
    ) -> None:
        """``frame_dropout``: the share of requests whose frame loses words (``drop_frame_words``); train only.
        ``training_frames``: draw training requests from ``TRAINING_PHRASINGS`` too (off by default, so that
        a seed draws the training requests it drew before they were written)."""
        if split not in SPLITS:
            raise ValueError(f"Invalid 'split' value {split!r} - must be one of {', '.join(SPLITS)}")
        self.split = split
        self.cards = list(cards)
        self.rng = random.Random(f"{seed}:{split}")
        self.vary_tools = split == "train" if vary_tools is None else vary_tools
        if not 0.0 <= frame_dropout <= 1.0:
            raise ValueError(f"Invalid 'frame_dropout' value {frame_dropout} - must be between 0 and 1")
        if frame_dropout and split != "train":
            raise ValueError(
                f"Invalid 'frame_dropout' {frame_dropout} for {split} - only training requests lose words"
            )
        self.frame_dropout = frame_dropout
        splits = family_splits()
        self.families: dict[tuple[str, str], list[Family]] = {}
        for family in all_families():
            if family.id.startswith(TRAINING_ONLY) and not training_frames:
                continue
            if splits[family.id] in (split, SHARED):
                self.families.setdefault((family.kind, family.language), []).append(family)

    # -- pieces

    def _family(self, kind: str, language: str) -> Family | None:
        options = self.families.get((kind, language))
        return self.rng.choice(options) if options else None

    def _template(self, family: Family) -> str:
        template = self.rng.choice(family.templates)
        if self.frame_dropout and self.rng.random() < self.frame_dropout:
            return drop_frame_words(template, self.rng)
        return template

    def _modality(self, intent: str) -> str:
        """A modality for the request; requests for structures go mostly to modalities that ground them."""
        weights = dict(MODALITY_WEIGHTS)
        if intent in _NEEDS_STRUCTURE and intent != "segmentation":
            weights = {**weights, "CT": 0.42, "CR": 0.17, "DX": 0.13, "": 0.03}
        return self.rng.choices(list(weights), list(weights.values()))[0]

    def _structures(self, modality: str, count: int) -> list[Structure]:
        pool = [s for s in STRUCTURES if not modality or modality in s.modalities]
        first = self.rng.choice(pool)
        same_region = [s for s in pool if s.body_part == first.body_part and s is not first]
        chosen = [first]
        while len(chosen) < count and same_region:
            pick = self.rng.choice(same_region)
            same_region.remove(pick)
            chosen.append(pick)
        return chosen

    def _study(self, modality: str, body_part: str) -> tuple[str, str, str, int]:
        parts = STUDIES[modality]
        if body_part not in parts:
            body_part = self.rng.choice(list(parts))
        descriptions = parts[body_part]
        study = self.rng.choice(descriptions) if self.rng.random() < 0.5 else ""
        series = self.rng.choice(descriptions) if self.rng.random() < 0.2 else ""
        low, high = FRAMES[modality]
        slices = self.rng.randint(low, high) if high and self.rng.random() < 0.5 else 0
        if self.rng.random() < 0.2:
            body_part = ""
        return body_part, study, series, slices

    def _offered(self, modality: str) -> list[str]:
        offered = [c.name for c in self.cards if not modality or modality in c.modalities]
        if not self.vary_tools:
            return offered
        roll = self.rng.random()
        if roll < 0.06 and len(offered) > 1:
            for _ in range(self.rng.choice((1, 1, 2))):
                if len(offered) > 1:
                    offered.remove(self.rng.choice(offered))
        elif roll < 0.12:
            extra = [c.name for c in self.cards if c.name not in offered]
            if extra:
                offered.append(self.rng.choice(extra))
        return [c.name for c in self.cards if c.name in offered]

    def _fill(self, template: str, language: str, part: Part, structures: Sequence[Structure]) -> str:
        """The template with its slots filled; sets the part's structures, labels and params."""
        text = template
        for slot, words in KEYWORDS.get(part.intent, {}).get(language, {}).items():
            while "{" + slot + "}" in text:
                text = text.replace("{" + slot + "}", self.rng.choice(words), 1)
        if "{s}" in text:
            surfaces = [s.surface(language, self.rng) for s in structures]
            joined = (
                surfaces[0]
                if len(surfaces) == 1
                else ", ".join(surfaces[:-1]) + f" {AND[language]} {surfaces[-1]}"
            )
            text = text.replace("{s}", joined)
            part.structures = [s.name for s in structures]
        if "{t}" in text:
            topic = self.rng.choice(TOPICS)
            text = text.replace("{t}", topic[LANGUAGES.index(language)])
        if "{labels}" in text:
            labels = list(self.rng.choice(LABEL_SETS)[language])
            self.rng.shuffle(labels)
            style = self.rng.random()
            if style < 0.15:
                written = "/".join(labels)
            elif style < 0.3:
                written = ", ".join(labels)
            else:
                written = ", ".join(labels[:-1]) + f" {OR[language]} {labels[-1]}"
            text = text.replace("{labels}", written)
            part.labels = labels
            if part.intent == "classification":
                part.intent = "classification_labels"
        if "{box}" in text or "{pt}" in text:
            frame = self.rng.randint(0, 300)
            text = text.replace("{f}", str(frame))
            label = structures[0].name
            if "{box}" in text:
                x0, y0 = self.rng.randint(0, 400), self.rng.randint(0, 400)
                box = [x0, y0, x0 + self.rng.randint(8, 200), y0 + self.rng.randint(8, 200)]
                written = self.rng.choice(("{0},{1},{2},{3}", "[{0}, {1}, {2}, {3}]", "({0}, {1}, {2}, {3})"))
                text = text.replace("{box}", written.format(*box))
                part.params = {"boxes": [{"label": label, "frame": frame, "xyxy": box}]}
            else:
                point = [self.rng.randint(0, 511), self.rng.randint(0, 511)]
                written = self.rng.choice(("({0}, {1})", "{0},{1}", "x={0} y={1}"))
                text = text.replace("{pt}", written.format(*point))
                part.params = {"points": [{"label": label, "frame": frame, "xy": point}]}
            part.structures = [label]
        return text

    def _count(self) -> int:
        roll = self.rng.random()
        return 3 if roll < 0.04 else 2 if roll < 0.2 else 1

    # -- requests

    def _single(self, intent: str, language: str) -> tuple[str, str, list[Part], str] | None:
        family = self._family(intent, language)
        if family is None:
            return None
        template = self._template(family)
        modality = self._modality(intent)
        if intent in ("vqa",) and "{s}" in template and not modality:
            modality = "CT"
        count = self._count() if intent in ("grounded_segmentation", "grounding", "two_step") else 1
        structures = self._structures(modality, count) if "{s}" in template else []
        part = Part(intent)
        text = self._fill(template, language, part, structures)
        if intent not in INTENT_TOOLS and intent not in ("greeting", "off_topic", "clarify"):
            raise AssertionError(intent)
        if part.intent == "vqa":
            part.structures = []  # a question names structures but asks no prompts
        body_part = structures[0].body_part if structures else ""
        return text, modality, [part], f"{family.id}|{body_part}"

    def _multi(self, language: str) -> tuple[str, str, list[Part], str] | None:
        first, second = self.rng.choice(COMBINATIONS)
        connector = self._family("connector", language)
        clause_a = self._family(f"clause:{first}", language)
        clause_b = self._family(f"clause:{second}", language)
        if connector is None or clause_a is None or clause_b is None:
            return None
        modality = self._modality(first)
        needs = [t for t in (first, second) if t in _NEEDS_STRUCTURE]
        structures = self._structures(modality, self._count()) if needs else []
        parts = []
        texts = []
        for intent, clause in ((first, clause_a), (second, clause_b)):
            part = Part(intent)
            texts.append(self._fill(self._template(clause), language, part, structures))
            if part.intent == "vqa":
                part.structures = []
            parts.append(part)
        text = self.rng.choice(connector.templates).replace("{a}", texts[0]).replace("{b}", texts[1])
        body_part = structures[0].body_part if structures else ""
        family = f"{connector.id}+{clause_a.id}+{clause_b.id}|{body_part}"
        return text, modality, parts, family

    def draw(self, index: int) -> Example:
        """One request; retried until its split has a family for the drawn intent and language."""
        while True:
            intent = self.rng.choices(list(INTENT_WEIGHTS), list(INTENT_WEIGHTS.values()))[0]
            language = self.rng.choices(list(LANGUAGE_WEIGHTS), list(LANGUAGE_WEIGHTS.values()))[0]
            drawn = self._multi(language) if intent == "multi" else self._single(intent, language)
            if drawn is not None:
                break
        text, modality, parts, family = drawn
        family_id, body_part = family.rsplit("|", 1)
        body_part, study_description, series_description, slices = self._study(modality, body_part)
        offered = tuple(self._offered(modality))
        plan = build_plan(parts, modality, offered)
        return Example(
            id=f"{self.split}-{index:05d}",
            split=self.split,
            family=family_id,
            language=language,
            instruction=_vary(text, language, self.rng, all(part.intent == "retrieval" for part in parts)),
            modality=modality,
            body_part=body_part,
            study_description=study_description if self.vary_tools else "",
            series_description=series_description if self.vary_tools else "",
            slices=slices if self.vary_tools else 0,
            offered=offered,
            plan=plan,
        )


def generate(
    split: str,
    count: int,
    cards: Sequence[ToolCard],
    seed: int = 0,
    *,
    exclude: Iterable[str] = (),
    frame_dropout: float = 0.0,
    training_frames: bool = False,
) -> list[Example]:
    """``count`` requests of ``split``; requests whose lower-cased text is in ``exclude`` are redrawn."""
    generator = Generator(split, cards, seed, frame_dropout=frame_dropout, training_frames=training_frames)
    excluded = {text.strip().lower() for text in exclude}
    examples: list[Example] = []
    attempts = 0
    while len(examples) < count:
        attempts += 1
        if attempts > count * 20:
            raise RuntimeError(f"cannot draw {count} distinct {split} requests")
        example = generator.draw(len(examples))
        if example.instruction.strip().lower() in excluded:
            continue
        examples.append(example)
    return examples


def default_cards(models: Any = None) -> list[ToolCard]:
    """The cards of the built-in tools (third-party tools are added with ``medagent planner add-tool``)."""
    from agent_core.registry import ToolRegistry

    return [tool.card for tool in ToolRegistry.default(models, entry_points=False).tools()]


# --------------------------------------------------------------------------------------------- records


def conversation(example: Example, cards: Sequence[ToolCard]) -> dict[str, Any]:
    """One training record in MMedAgent's conversation format (the human turn is the planner's prompt)."""
    offered = [card for card in cards if card.name in example.offered]
    line = study_line(
        example.modality,
        example.body_part,
        example.study_description,
        example.series_description,
        example.slices,
    )
    return {
        "id": example.id,
        "conversations": [
            {"from": "human", "value": user_prompt(offered, line, example.instruction)},
            {"from": "gpt", "value": example.plan.to_mmedagent_text()},
        ],
        "instruction": example.instruction,
        "modality": example.modality,
        "body_part": example.body_part,
        "offered_tools": list(example.offered),
        "expected_tools": example.expected_tools,
        "expected_prompts": example.expected_prompts,
        "family": example.family,
        "language": example.language,
        "split": example.split,
    }


def eval_item(example: Example) -> dict[str, Any]:
    """One request as ``medagent planner eval`` reads it."""
    return {
        "id": example.id,
        "instruction": example.instruction,
        "modality": example.modality,
        "body_part": example.body_part,
        "expected_tools": example.expected_tools,
        "expected_prompts": example.expected_prompts,
    }


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object a line (atomically); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".part")
    count = 0
    with temporary.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    temporary.replace(path)
    return count


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file; a bad line raises ``ValueError`` naming the file and line."""
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, not {type(record).__name__}")
            yield record


@dataclass(frozen=True)
class DataSet:
    """The three splits of one generation."""

    train: list[Example]
    val: list[Example]
    test: list[Example]


def build_dataset(
    cards: Sequence[ToolCard],
    train: int,
    val: int,
    test: int,
    seed: int = 0,
    frame_dropout: float = 0.0,
    training_frames: bool = False,
) -> DataSet:
    """Train, val and test requests; val and test never repeat a training request's text.

    With ``training_frames`` val and test are those drawn without them (the same held-out requests), and
    a training request whose text is one of theirs is redrawn instead."""
    train_examples = generate("train", train, cards, seed, frame_dropout=frame_dropout)
    seen = [e.instruction for e in train_examples]
    val_examples = generate("val", val, cards, seed, exclude=seen)
    test_examples = generate("test", test, cards, seed, exclude=seen)
    if training_frames:
        held_out = [e.instruction for e in val_examples + test_examples]
        train_examples = generate(
            "train",
            train,
            cards,
            seed,
            exclude=held_out,
            frame_dropout=frame_dropout,
            training_frames=True,
        )
    return DataSet(train_examples, val_examples, test_examples)


def write_dataset(out: Path, dataset: DataSet, cards: Sequence[ToolCard]) -> dict[str, int]:
    """``train.jsonl``/``val.jsonl``/``test.jsonl`` (conversations) and ``val_eval.jsonl``/``test_eval.jsonl``
    (eval requests) in ``out``; returns the counts by file name."""
    out = Path(out)
    counts = {}
    for split in SPLITS:
        examples = getattr(dataset, split)
        counts[f"{split}.jsonl"] = write_jsonl(
            out / f"{split}.jsonl", (conversation(e, cards) for e in examples)
        )
        if split != "train":
            counts[f"{split}_eval.jsonl"] = write_jsonl(
                out / f"{split}_eval.jsonl", (eval_item(e) for e in examples)
            )
    return counts


# ------------------------------------------------------------------------------------------- new tools


def card_from_dict(data: dict[str, Any]) -> ToolCard:
    """A tool card from JSON (``medagent planner add-tool --card``): name, description, modalities,
    parameters (a JSON schema; default: none), optional tasks, outputs and aliases."""
    for key in ("name", "description", "modalities"):
        if not data.get(key):
            raise ValueError(f"Invalid tool card - '{key}' is missing or empty")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", str(data["name"])):
        raise ValueError(f"Invalid 'name' value {data['name']!r} - use lower-case letters, digits and '_'")
    parameters = data.get("parameters") or {"type": "object", "properties": {}, "additionalProperties": False}
    return ToolCard(
        name=str(data["name"]),
        description=str(data["description"]),
        tasks=tuple(data.get("tasks") or (data["name"],)),
        modalities=tuple(str(m).upper() for m in data["modalities"]),
        parameters=parameters,
        outputs=tuple(data.get("outputs") or ("text",)),
        aliases=tuple(data.get("aliases") or ()),
    )


def new_tool_examples(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The example requests of a new tool's spec: ``[{"instruction", "params"?, "language"?}]``."""
    examples = spec.get("examples") or []
    if len(examples) < 5:
        raise ValueError('Invalid tool spec - give at least 5 \'examples\' ({"instruction", "params"})')
    for index, example in enumerate(examples):
        if not isinstance(example, dict) or not str(example.get("instruction", "")).strip():
            raise ValueError(f"Invalid 'examples[{index}]' value {example!r} - needs an 'instruction'")
    return examples


def split_new_tool_examples(examples: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """A fifth of a new tool's example requests (by a fixed hash of their text) is held out for test."""
    ordered = sorted(examples, key=lambda e: _stable_key(str(e["instruction"])))
    n_test = max(1, round(len(ordered) * 0.2))
    return {"test": list(ordered[:n_test]), "train": list(ordered[n_test:])}


def new_tool_draws(
    card: ToolCard,
    examples: Sequence[dict[str, Any]],
    cards: Sequence[ToolCard],
    count: int,
    split: str,
    seed: int = 0,
) -> list[Example]:
    """``count`` requests for the new tool from its ``examples``, on studies of its modalities, offered
    with the old tools; a tenth on a modality it does not take, where the answer is that it cannot run."""
    rng = random.Random(f"{seed}:{card.name}:{split}")
    all_cards = [*cards, card]
    found = []
    for index in range(count):
        example = rng.choice(list(examples))
        inside = rng.random() >= 0.1
        modalities = [m for m in STUDIES if m and (m in card.modalities) == inside] or list(card.modalities)
        modality = rng.choice(modalities)
        body_part = rng.choice(list(STUDIES[modality]))
        offered = tuple(c.name for c in all_cards if modality in c.modalities)
        action = Action(card.name, dict(example.get("params") or {}))
        phrase = str(example.get("thought") or f"run {card.name}")
        if card.name in offered:
            plan = Plan(phrase[0].upper() + phrase[1:] + ".", (action,), plan_value([action]))
        else:
            plan = Plan(
                f"{phrase[0].upper() + phrase[1:]} needs {card.name}, not offered for {modality}.",
                (),
                f"I cannot do that here: {card.name} is not available for {modality} studies.",
            )
        instruction = _vary(str(example["instruction"]), str(example.get("language", "en")), rng)
        found.append(
            Example(
                id=f"{card.name}-{split}-{index:05d}",
                split=split,
                family=f"{card.name}.{_stable_key(str(example['instruction']))[:8]}",
                language=str(example.get("language", "en")),
                instruction=instruction,
                modality=modality,
                body_part=body_part,
                study_description="",
                series_description="",
                slices=0,
                offered=offered,
                plan=plan,
            )
        )
    return found


def replay_draws(
    card: ToolCard, cards: Sequence[ToolCard], count: int, seed: int, split: str = "train"
) -> list[Example]:
    """``count`` old-tool requests of ``split`` on studies where ``card`` runs (its modalities, or none
    given), offered with it: the only requests that the adapter ``add-tool`` trains is ever asked to plan
    (see ``llm.adapter_layers``), and those where it must keep leaving the old tools' requests alone (the
    training replay; with ``split="val"``, the requests its threshold is calibrated on)."""
    pool = max(count * 8, 64)
    while True:
        offered = [with_tool_offered(example, card) for example in generate(split, pool, cards, seed)]
        found = [example for example in offered if card.name in example.offered]
        if len(found) >= count:
            return found[:count]
        if pool >= count * 256:
            raise RuntimeError(f"too few generated requests on studies where {card.name} runs: {len(found)}")
        pool *= 4


def with_tool_offered(example: Example, card: ToolCard) -> Example:
    """An old example re-offered with the new tool where it runs: the model must keep ignoring it."""
    if card.name in example.offered or (example.modality and example.modality not in card.modalities):
        return example
    return dataclasses.replace(example, offered=(*example.offered, card.name))
