"""UID helpers: deterministic output UIDs and UIDs made safe to use as file names."""

from __future__ import annotations

import re

from pydicom.uid import generate_uid

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: object) -> bool:
    """Whether ``value`` is a syntactically valid UID (digits and dots, at most 64 characters)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


def uid_for_path(value: object) -> str:
    """Return ``value`` for use as a path component; raise ``ValueError`` if it is not a valid UID."""
    text = str(value or "").strip().rstrip("\x00")
    if not is_valid_uid(text):
        raise ValueError(f"Invalid UID value {text[:80]!r} - must be digits and dots, at most 64 characters")
    return text


def deterministic_uid(prefix: str, *entropy: object) -> str:
    """A UID that depends only on ``prefix`` and ``entropy``: re-running a job gives the same UID."""
    return generate_uid(prefix=prefix, entropy_srcs=[str(e) for e in entropy])
