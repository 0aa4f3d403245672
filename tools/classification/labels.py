"""The image-type labels MMedAgent classified with, and how candidate labels from a plan are cleaned."""

from __future__ import annotations

import re
from collections.abc import Iterable

#: MMedAgent's 14 image-type labels for its BiomedCLIP tool, in its order: the ``labels`` list of
#: ``data_processing/classification_inf.py`` in github.com/Wangyixinxin/MMedAgent. Nine of them are the
#: example labels of the BiomedCLIP model card (microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224).
IMAGE_TYPE_LABELS: tuple[str, ...] = (
    "adenocarcinoma histopathology",
    "brain MRI",
    "covid line chart",
    "diagnostic flowchart",
    "diagnostic scatter plot",
    "squamous cell carcinoma histopathology",
    "immunohistochemistry histopathology",
    "bone X-ray",
    "chest X-ray",
    "abdomen CT",
    "lung CT",
    "pie chart",
    "hematoxylin and eosin histopathology",
    "gross",
)


def clean_labels(labels: Iterable[object] | str) -> list[str]:
    """Candidate labels stripped, inner spaces collapsed, empty ones and repeats (ignoring case) dropped.

    Case is kept: "X-ray" and "MRI" read better in a report than their lower-case forms.
    """
    if isinstance(labels, str):
        labels = [labels]
    cleaned: list[str] = []
    seen: set[str] = set()
    for label in labels:
        text = re.sub(r"\s+", " ", str(label).strip())
        if text and text.casefold() not in seen:
            seen.add(text.casefold())
            cleaned.append(text)
    return cleaned


def top(labels: dict[str, float], top_k: int | None) -> dict[str, float]:
    """The ``top_k`` most probable labels, most probable first (ties by name); all of them when None."""
    ordered = sorted(labels.items(), key=lambda item: (-item[1], item[0]))
    return dict(ordered if top_k is None else ordered[:top_k])
