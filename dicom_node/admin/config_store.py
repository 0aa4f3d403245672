"""The node's configuration as admins edit it: sources, destinations, routes and the node's own AE.

One ``ConfigStore`` serves the REST API and the CLI. Every change is validated as a whole configuration
with the models of ``config.settings`` (what ``medagent check`` runs), then written to the YAML file
atomically: a temporary file beside it, fsync'ed, handed to ``apply`` (the running node's
``reconfigure``), and only then renamed over the file. A change the node cannot take (a port in use) is
refused and the file stays as it was. A lock file beside the configuration serialises writers, so the API
and a CLI in another process never lose each other's changes. Comments and key order survive (ruamel.yaml
round trip).

A store made without a file keeps its changes in memory only (a node started from ``Settings`` alone).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import io
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from config.settings import (
    ConfigError,
    Destination,
    Route,
    Settings,
    Source,
    check_ae_title,
    check_host,
    parse_settings,
    validation_messages,
)
from dicom_node.admin.errors import EntityConflict, EntityNotFound, InvalidEntity

__all__ = ["SECTIONS", "ConfigStore", "NodeIdentity", "source_id"]
logger = logging.getLogger(__name__)


def source_id(source: Source) -> str:
    """A source's key: its AE title, or ``AE@host`` when it is bound to a host."""
    return source.ae_title if source.host is None else f"{source.ae_title}@{source.host}"


@dataclass(frozen=True)
class _Section:
    """One list of the configuration that admins edit entry by entry."""

    name: str  # the YAML key: sources, destinations, routes
    noun: str  # what one entry is called in messages
    model: type[BaseModel]
    key: Callable[[Any], str]
    renamable: bool  # whether an update may change the key


SECTIONS: dict[str, _Section] = {
    "sources": _Section("sources", "source", Source, source_id, renamable=True),
    "destinations": _Section("destinations", "destination", Destination, lambda d: d.name, renamable=False),
    "routes": _Section("routes", "route", Route, lambda r: r.name, renamable=False),
}


class NodeIdentity(BaseModel):
    """The node's own DICOM identity: its AE title and where its SCP listens (``node`` keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: str
    port: int = Field(ge=1, le=65535)
    bind: str = "127.0.0.1"

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))
    _check_bind_address = field_validator("bind")(classmethod(lambda cls, v: check_host(v)))


def _plain(value: Any) -> Any:
    """``value`` (ruamel round-trip types included) as plain dicts, lists and scalars."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _relative(errors: list[tuple[str, str]], prefix: str) -> list[tuple[str, str]]:
    """Error paths under ``prefix`` (``routes[2]``) made relative to it; others kept whole."""
    relative = []
    for path, message in errors:
        if path == prefix:
            relative.append(("", message))
        elif path.startswith(prefix + "."):
            relative.append((path[len(prefix) + 1 :], message))
        elif message.startswith(prefix + "."):  # a whole-configuration check that names the key itself
            field, _, rest = message[len(prefix) + 1 :].partition(": ")
            relative.append((field, rest or message))
        else:
            relative.append((path, message))
    return relative


class ConfigStore:
    """Validated, persisted, applied edits of one configuration file (or of settings in memory).

    ``apply`` is called with the new ``Settings`` before the file is replaced; if it raises, nothing
    changes. ``environ`` is the environment whose ``MEDAGENT__...`` overrides apply (default: the
    process's), as for ``load_settings``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        settings: Settings | None = None,
        apply: Callable[[Settings], None] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.path = None if path is None else Path(path).resolve()
        self.apply = apply
        self.environ = dict(os.environ if environ is None else environ)
        self._lock = threading.RLock()
        self._yaml = YAML(typ="rt")
        self._yaml.preserve_quotes = True
        self._yaml.indent(mapping=2, sequence=4, offset=2)
        self._yaml.width = 4096
        self._yaml.representer.add_representer(
            type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
        )
        self._digest = ""
        self._memory: dict[str, Any] = {}
        if self.path is None:
            if settings is None:
                raise ValueError("Invalid 'settings' value None - a store without a file needs settings")
            self._memory = settings.model_dump(mode="json", exclude_unset=True)
            self._settings = settings
        else:
            raw, self._digest = self._read()
            self._settings = settings if settings is not None else self._validate(raw)

    def __repr__(self) -> str:
        return f"ConfigStore(path={str(self.path) if self.path else None!r})"

    @property
    def settings(self) -> Settings:
        """The settings as last validated (and applied)."""
        return self._settings

    @property
    def persistent(self) -> bool:
        return self.path is not None

    @property
    def _where(self) -> str:
        return str(self.path) if self.path else "the settings in memory"

    # -- reading --------------------------------------------------------------------------------------

    def entries(self, section: str) -> list[Any]:
        return list(getattr(self._settings, SECTIONS[section].name))

    def entry(self, section: str, key: str) -> Any:
        spec = SECTIONS[section]
        for item in getattr(self._settings, spec.name):
            if spec.key(item) == key:
                return item
        raise EntityNotFound(spec.noun, key)

    def identity(self) -> NodeIdentity:
        node = self._settings.node
        return NodeIdentity(ae_title=node.ae_title, port=node.port, bind=node.bind)

    # -- changes --------------------------------------------------------------------------------------

    def create(self, section: str, data: Mapping[str, Any], position: int | None = None) -> Any:
        """Add an entry (at ``position`` in the list, default the end); ``EntityConflict`` if its key exists."""
        spec = SECTIONS[section]
        entity = self._entity(spec, data)
        key = spec.key(entity)

        def change(raw: Any, items: list[Any]) -> int:
            if any(spec.key(item) == key for item in items):
                raise EntityConflict(f"{spec.noun} '{key}' exists already")
            self._check_references(spec, entity, raw)
            where = len(items) if position is None else max(0, min(position, len(items)))
            self._section_list(raw, spec).insert(where, self._dump(entity))
            return where

        self._change(spec, change)
        logger.info("%s '%s' added to %s", spec.noun, key, self._where)
        return self.entry(section, key)

    def replace(self, section: str, key: str, data: Mapping[str, Any]) -> Any:
        """Replace the entry ``key`` with ``data`` at the same place in the list."""
        spec = SECTIONS[section]
        entity = self._entity(spec, data)
        new_key = spec.key(entity)
        if new_key != key and not spec.renamable:
            raise InvalidEntity(
                [("name", f"'{new_key}' must be '{key}' as in the path; to rename, create and then delete")]
            )

        def change(raw: Any, items: list[Any]) -> int:
            where = self._position(spec, items, key)
            if new_key != key and any(spec.key(item) == new_key for item in items):
                raise EntityConflict(f"{spec.noun} '{new_key}' exists already")
            self._check_references(spec, entity, raw)
            self._section_list(raw, spec)[where] = self._dump(entity)
            return where

        self._change(spec, change)
        logger.info("%s '%s' replaced in %s", spec.noun, key, self._where)
        return self.entry(section, new_key)

    def delete(self, section: str, key: str) -> None:
        """Remove the entry ``key``; a destination that routes still name is not removed (``EntityConflict``)."""
        spec = SECTIONS[section]

        def change(raw: Any, items: list[Any]) -> None:
            where = self._position(spec, items, key)
            if spec.name == "destinations":
                users = [route.name for route in self._settings.routes if key in route.destinations]
                if users:
                    raise EntityConflict(
                        f"destination '{key}' is used by route(s) {', '.join(users)}; change them first"
                    )
            items = self._section_list(raw, spec)
            del items[where]
            if not items:  # ruamel writes an emptied block list as a bare "[]" that does not parse back
                empty = CommentedSeq()
                empty.fa.set_flow_style()
                raw[spec.name] = empty
            return None

        self._change(spec, change)
        logger.info("%s '%s' removed from %s", spec.noun, key, self._where)

    def update_identity(self, data: Mapping[str, Any]) -> NodeIdentity:
        """Set the node's AE title, port and bind address (``bind`` kept when not given)."""
        given = dict(data)
        given.setdefault("bind", self._settings.node.bind)
        try:
            identity = NodeIdentity.model_validate(given)
        except ValidationError as exc:
            raise InvalidEntity(validation_messages(exc)) from None

        def change(raw: Any, items: list[Any]) -> None:
            node = raw.get("node")
            if not isinstance(node, dict):
                node = raw["node"] = CommentedMap()
            node.update(identity.model_dump(mode="json"))

        self._change(None, change)
        logger.info(
            "node AE %s on %s:%d set in %s", identity.ae_title, identity.bind, identity.port, self._where
        )
        return self.identity()

    def reload_if_changed(self) -> bool:
        """Read the file again if another process (the CLI, an editor) changed it; apply it if it is valid.

        An invalid file is logged (naming the key) and not applied; the node keeps its settings. Returns
        whether new settings were applied.
        """
        if self.path is None:
            return False
        with self._locked():
            try:
                text = self.path.read_bytes()
            except OSError as exc:
                logger.error("cannot read %s: %s", self.path, exc.strerror)
                return False
            digest = hashlib.sha256(text).hexdigest()
            if digest == self._digest:
                return False
            self._digest = digest
            try:
                settings = self._validate(self._parse(text))
                if self.apply is not None:
                    self.apply(settings)
            except (ConfigError, InvalidEntity) as exc:
                logger.error("%s changed but is not applied: %s", self.path, exc)
                return False
            except Exception:
                logger.exception("%s changed but could not be applied", self.path)
                return False
            self._settings = settings
            logger.info("%s changed: new settings applied", self.path)
            return True

    # -- internals ------------------------------------------------------------------------------------

    def _entity(self, spec: _Section, data: Mapping[str, Any]) -> Any:
        try:
            return spec.model.model_validate(dict(data))
        except ValidationError as exc:
            raise InvalidEntity(validation_messages(exc)) from None

    @staticmethod
    def _dump(entity: BaseModel) -> dict[str, Any]:
        return entity.model_dump(mode="json", exclude_unset=True)

    def _position(self, spec: _Section, items: list[Any], key: str) -> int:
        for where, item in enumerate(items):
            if spec.key(item) == key:
                return where
        raise EntityNotFound(spec.noun, key)

    def _check_references(self, spec: _Section, entity: Any, raw: Any) -> None:
        if spec.name != "routes":
            return
        known = [destination.name for destination in self._settings.destinations]
        for name in entity.destinations:
            if name not in known:
                raise InvalidEntity(
                    [("destinations", f"'{name}' is not a configured destination (known: {known})")]
                )

    @staticmethod
    def _section_list(raw: Any, spec: _Section) -> list[Any]:
        items = raw.get(spec.name)
        if not isinstance(items, list):
            items = raw[spec.name] = CommentedSeq()
        return items

    def _change(self, spec: _Section | None, change: Callable[[Any, list[Any]], int | None]) -> None:
        """Run ``change(raw, current entries)`` on the file's mapping, validate, apply and persist."""
        with self._locked():
            if self.path is None:
                raw: Any = copy.deepcopy(self._memory)
            else:
                raw, digest = self._read()
                if digest != self._digest:  # changed by another process since we last read it
                    self._settings = self._validate(raw)
                    self._digest = digest
            items = [] if spec is None else list(getattr(self._settings, spec.name))
            where = change(raw, items)
            try:
                settings = self._validate(raw)
            except ConfigError as exc:
                prefix = "node" if spec is None else f"{spec.name}[{where}]"
                raise InvalidEntity(_relative(exc.errors, prefix) or [("", str(exc))]) from None
            if self.path is None:
                if self.apply is not None:
                    self.apply(settings)
                self._memory = raw
            else:
                self._persist(raw, settings)
            self._settings = settings

    def _validate(self, raw: Any) -> Settings:
        origin = str(self.path) if self.path else "<settings>"
        settings = parse_settings(_plain(raw), origin=origin, environ=self.environ).with_absolute_storage()
        if self.path is None:  # the token is never dumped; the in-memory copy keeps the original one
            settings = settings.model_copy(update={"admin": self._settings.admin})
        return settings

    def _parse(self, text: bytes) -> Any:
        try:
            raw = self._yaml.load(text.decode("utf-8"))
        except Exception as exc:
            raise ConfigError(f"{self.path}: not valid YAML: {exc}") from None
        if raw is None:
            return CommentedMap()
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.path}: the top level must be a mapping of sections")
        return raw

    def _read(self) -> tuple[Any, str]:
        assert self.path is not None
        try:
            text = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the configuration file: {exc.strerror}") from None
        return self._parse(text), hashlib.sha256(text).hexdigest()

    def _persist(self, raw: Any, settings: Settings) -> None:
        assert self.path is not None
        buffer = io.StringIO()
        self._yaml.dump(raw, buffer)
        data = buffer.getvalue().encode("utf-8")
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(OSError):
                os.chmod(temporary, stat.S_IMODE(self.path.stat().st_mode))
            if self.apply is not None:
                self.apply(settings)
            os.replace(temporary, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._digest = hashlib.sha256(data).hexdigest()
        logger.debug("%s written", self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self.path is None:
                yield
                return
            lock_path = self.path.with_name(f".{self.path.name}.lock")
            with open(lock_path, "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
