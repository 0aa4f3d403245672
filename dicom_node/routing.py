"""Declarative routing: a route matches when every configured keyword's value fully matches its pattern."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from config import Route

#: Keywords kept in the index for each instance: enough to route and plan, nothing that identifies a patient.
INDEXED_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "SeriesNumber",
    "InstanceNumber",
    "Manufacturer",
    "ImageType",
    "Rows",
    "Columns",
    "NumberOfFrames",
)


def keyword_text(dataset: Dataset, keyword: str) -> str | None:
    """The value of ``keyword`` as text (multi-values joined with a backslash), or None when absent."""
    value = dataset.get(keyword)
    if value is None:
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def indexed_attributes(dataset: Dataset) -> dict[str, Any]:
    attributes = {}
    for keyword in INDEXED_KEYWORDS:
        text = keyword_text(dataset, keyword)
        if text is not None:
            attributes[keyword] = text
    return attributes


def route_matches(route: Route, dataset: Dataset) -> bool:
    for keyword, pattern in route.match.items():
        value = keyword_text(dataset, keyword)
        if value is None or not re.fullmatch(pattern, value, flags=re.IGNORECASE):
            return False
    return True


def select_route(routes: Iterable[Route], dataset: Dataset) -> Route | None:
    """The first route, in configuration order, that matches ``dataset``."""
    for route in routes:
        if route_matches(route, dataset):
            return route
    return None
