"""Normalising structure names that users and planners write ("Left Lung", "lungs", "both lungs")."""

from __future__ import annotations

import re

_EXPANSIONS = {
    "lungs": ("left lung", "right lung"),
    "both lungs": ("left lung", "right lung"),
    "lung": ("left lung", "right lung"),
    "bilateral lungs": ("left lung", "right lung"),
    "lung fields": ("left lung", "right lung"),
    "left lung field": ("left lung",),
    "right lung field": ("right lung",),
    "bones": ("bone",),
    "skeleton": ("bone",),
}


def normalise_prompts(prompts: list[str] | str) -> list[str]:
    """Lower-case, collapse spaces, expand plural structures; keeps order and drops duplicates."""
    if isinstance(prompts, str):
        prompts = [prompts]
    result: list[str] = []
    for prompt in prompts:
        text = re.sub(r"\s+", " ", str(prompt).strip().lower())
        for name in _EXPANSIONS.get(text, (text,)):
            if name and name not in result:
                result.append(name)
    return result
