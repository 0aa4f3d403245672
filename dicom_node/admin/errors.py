"""What admin operations raise; the API maps each to an HTTP status and the CLI to an exit code.

NodeError
└── AdminError             an admin request cannot be carried out
    ├── EntityNotFound     no source, destination, route, study or job by that key (404)
    ├── EntityConflict     the key exists already, or another entity still refers to it (409)
    └── InvalidEntity      a value is invalid; ``errors`` names each field (422)
"""

from __future__ import annotations

from dicom_node.errors import NodeError


class AdminError(NodeError):
    """An admin request cannot be carried out."""


class EntityNotFound(AdminError):
    """No ``kind`` by ``key``."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} '{key}' does not exist")


class EntityConflict(AdminError):
    """The request conflicts with what is configured (a duplicate key, a reference to what is deleted)."""


class InvalidEntity(AdminError):
    """Invalid values: ``errors`` lists ``(field path, message)``, the path relative to the entity sent."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{field or '(body)'}: {message}" for field, message in self.errors))
