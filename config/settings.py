"""Node settings read from one YAML file and validated before anything starts.

Every error names the key path that is wrong (``routes[0].destinations``) and quotes the value, so an
admin can fix the file without reading code. Environment variables ``MEDAGENT__SECTION__KEY`` override
scalar keys of the file (``MEDAGENT__NODE__PORT=11113``).
"""

from __future__ import annotations

import os
import re
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

_AE_TITLE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]+$")  # default character repertoire, no backslash


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message names the key.

    ``errors`` lists ``(key path, message)`` pairs (``("routes[0].destinations", "...")``) when the file was
    read but its values are invalid; it is empty when the file could not be read or parsed.
    """

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [])


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise ValueError("must not be empty")
    if len(stripped) > 16:
        raise ValueError(f"'{value}' must not exceed 16 characters")
    if not _AE_TITLE_CHARS.match(stripped):
        raise ValueError(f"'{value}' may hold only printable ASCII characters and no backslash")
    return stripped


#: the AE title check of every model here: stripped, 1-16 characters of the default repertoire, no backslash
check_ae_title = _check_ae_title

_HOST_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"


def check_host(value: str) -> str:
    """An IP address or a host name (ASCII labels of letters, digits, ``-`` and ``_``), as peers are named."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if len(value) > 253 or not re.fullmatch(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*\.?", value):
        raise ValueError(f"{value!r} is not an IP address or a host name")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSection(_Strict):
    """DICOM TLS for incoming associations (PS3.15 B.1; IANA port 2762).

    ``certificate`` and ``private_key`` are PEM files. With ``ca_certificates`` (a PEM bundle) a peer must
    present a certificate signed by one of them; without it any peer may connect over TLS and the calling
    AE title and host checks still apply. ``port`` null makes ``node.port`` itself TLS-only; a port here
    adds a TLS listener beside the plain one on ``node.port``.
    """

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    port: int | None = Field(None, ge=1, le=65535)

    @field_validator("certificate", "private_key", "ca_certificates")
    @classmethod
    def _check_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"'{value}' is not a readable file")
        return value

    @model_validator(mode="after")
    def _check_loadable(self) -> TlsSection:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.certificate, self.private_key)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"certificate '{self.certificate}' and private_key '{self.private_key}' do not load as a"
                f" PEM certificate with its unencrypted key: {exc}"
            ) from None
        if self.ca_certificates is not None:
            try:
                context.load_verify_locations(cafile=self.ca_certificates)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"ca_certificates '{self.ca_certificates}' is not a PEM bundle: {exc}"
                ) from None
        return self


class NodeSection(_Strict):
    """The node's own DICOM identity and where it keeps its state."""

    ae_title: str = "MEDAGENT"
    port: int = Field(11112, ge=1, le=65535)
    bind: str = "127.0.0.1"
    storage: Path = Path("./var")
    uid_prefix: str = "1.2.826.0.1.3680043.8.498."
    series_number_base: int = Field(9000, ge=1, le=2**31 - 1000)
    max_pdu_size: int = Field(1048576, ge=0)
    max_associations: int = Field(16, ge=1, le=1000)
    #: processes that serve associations of ``port`` (the node accepts, and hands each connection to the
    #: least loaded): one Python process receives at most ~350 instances/s whatever its associations;
    #: ``max_associations`` counts them all together
    listener_processes: int = Field(1, ge=1, le=64)
    institution_name: str = "MedAgent Node"
    #: the largest data set (bytes, as received) the SCP stores; a larger one is refused with 0xA701
    max_dataset_bytes: int = Field(2 * 1024**3, ge=1024)
    #: SOP Class UIDs the SCP accepts; null accepts every storage SOP class, private ones included
    restrict_sop_classes: list[str] | None = None
    #: DICOM TLS; null (the default) listens on plain TCP only
    tls: TlsSection | None = None

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @field_validator("uid_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.", value) or len(value) > 40:
            raise ValueError(
                f"'{value}' must be a dotted numeric UID root ending with '.', at most 40 characters"
            )
        return value

    @field_validator("restrict_sop_classes")
    @classmethod
    def _check_sop_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for uid in value:
            if not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", uid) or len(uid) > 64:
                raise ValueError(f"'{uid}' is not a SOP Class UID (digits and dots, at most 64 characters)")
        return value


class GroupBy(str, Enum):
    """What one job covers: a whole study, or each series of it on its own timers."""

    STUDY = "study"
    SERIES = "series"


class OnGrowth(str, Enum):
    """What a study (or series) that receives new instances after its job was created gets."""

    NEW_JOB = "new_job"  # a new job only for the series whose instance set changed
    REPROCESS = "reprocess"  # a new job over every series, as if the study were new
    IGNORE = "ignore"  # logged, no job


class CompletionPolicy(_Strict):
    """When a study (or, with ``group_by: series``, a series) counts as complete, and what growth does.

    Complete at the first of: ``quiet_seconds`` with no new instance; ``release_quiet_seconds`` after the
    release of the association(s) that delivered it, if ``release_hint`` and no new instance since (a
    release is a hint, not proof: a study may come over several associations); ``release_quiet_seconds``
    after the last instance once the study holds ``expected_series`` series; ``force_complete_seconds``
    after its first instance (for a sender that never goes quiet); a manual "process now".
    ``release_quiet_seconds`` only ever shortens the wait: it is capped at ``quiet_seconds``. Times are seconds.
    """

    quiet_seconds: float = Field(5.0, gt=0, le=86400)
    release_hint: bool = True
    release_quiet_seconds: float = Field(1.0, gt=0, le=86400)
    expected_series: int | None = Field(None, ge=1, le=10000)
    force_complete_seconds: float = Field(3600.0, gt=0, le=7 * 86400)
    group_by: GroupBy = GroupBy.STUDY
    on_growth: OnGrowth = OnGrowth.NEW_JOB

    @field_validator("group_by", "on_growth", mode="before")
    @classmethod
    def _check_choice(cls, value: Any, info: ValidationInfo) -> Any:
        choices = GroupBy if info.field_name == "group_by" else OnGrowth
        if isinstance(value, Enum):
            value = value.value
        if not isinstance(value, str) or value not in {choice.value for choice in choices}:
            raise ValueError(f"{value!r} must be one of {', '.join(choice.value for choice in choices)}")
        return value

    def overridden_by(self, override: CompletionPolicy | None) -> CompletionPolicy:
        """This policy with the keys that ``override`` sets explicitly (a source's keys win over a route's)."""
        if override is None:
            return self
        return self.model_copy(update={key: getattr(override, key) for key in override.model_fields_set})


class Source(_Strict):
    """A peer allowed to send studies: its calling AE title and, optionally, the host it must call from.

    ``host`` is an IP address or a host name (resolved when the node starts); an association with this
    calling AE title from any other address is rejected (calling AE title not recognised). Several sources
    may share an AE title with different hosts.
    """

    ae_title: str
    host: str | None = None
    completion: CompletionPolicy | None = None  # keys set here win over the route's completion keys

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))
    _check_host = field_validator("host")(classmethod(lambda cls, v: v if v is None else check_host(v)))

    @field_serializer("completion")
    def _dump_only_set_keys(self, value: CompletionPolicy | None) -> dict[str, Any] | None:
        # An override is the keys the admin wrote; dumping defaults too would override every route key.
        return None if value is None else value.model_dump(mode="json", exclude_unset=True)


class Destination(_Strict):
    """A peer that receives the node's results by C-STORE.

    ``transfer_syntaxes`` lists the transfer syntax UIDs the destination accepts (empty: propose each
    object's own syntax plus explicit and implicit VR little endian); objects are transcoded to one of them
    when needed. With ``storage_commitment`` the node asks the destination to commit to what it received
    (N-ACTION) and records the answer.
    """

    name: str = Field(min_length=1, max_length=64)
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    transfer_syntaxes: list[str] = Field(default_factory=list)
    storage_commitment: bool = False

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))
    _check_host = field_validator("host")(classmethod(lambda cls, v: check_host(v)))

    @field_validator("transfer_syntaxes")
    @classmethod
    def _check_transfer_syntaxes(cls, value: list[str]) -> list[str]:
        from pydicom.uid import UID

        for uid in value:
            if not UID(uid).is_transfer_syntax:
                raise ValueError(f"'{uid}' is not a known transfer syntax UID")
        return value


class Route(_Strict):
    """Studies whose first instance matches ``match`` get ``instruction`` run and results sent."""

    name: str = Field(min_length=1, max_length=64)
    match: dict[str, str] = Field(default_factory=dict)
    instruction: str = Field(min_length=1)
    destinations: list[str] = Field(default_factory=list)
    completion: CompletionPolicy = CompletionPolicy()

    @field_validator("match")
    @classmethod
    def _check_match(cls, value: dict[str, str]) -> dict[str, str]:
        from pydicom.datadict import dictionary_VR, tag_for_keyword

        for keyword, pattern in value.items():
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise ValueError(f"'{keyword}' is not a DICOM keyword")
            if dictionary_VR(tag) == "SQ":
                raise ValueError(f"'{keyword}' is a sequence and cannot be matched")
            try:
                re.compile(str(pattern))
            except re.error as exc:
                raise ValueError(f"pattern '{pattern}' for '{keyword}' is not a valid regex: {exc}") from None
        return {k: str(v) for k, v in value.items()}


class QueueMode(str, Enum):
    EMBEDDED = "embedded"
    REDIS = "redis"


class PlannerKind(str, Enum):
    RULES = "rules"
    LLM = "llm"


class PlannerSection(_Strict):
    """Which planner turns an instruction into a Plan (issue 6).

    ``rules`` (default): the declarative rules planner; ``rules`` lists extra rules tried before the
    built-in ones (their schema is ``agent_core.planner.rules``'s). ``llm``: SmolLM2-135M-Instruct with the
    LoRA ``adapter`` (default: the adapter committed in this repository), or the causal LM of
    ``models.llm``; an invalid plan falls back to the rules planner and is logged.
    """

    kind: PlannerKind = PlannerKind.RULES
    adapter: Path | None = None
    rules: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("kind", mode="before")
    @classmethod
    def _check_kind(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in {kind.value for kind in PlannerKind}:
            raise ValueError(f"'{value}' must be one of rules, llm")
        return value

    @field_validator("rules")
    @classmethod
    def _check_rules(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from agent_core.planner.rules import check_rules

        errors = check_rules(value, where="planner.rules")
        if errors:
            raise ValueError("; ".join(errors))
        return value

    @field_validator("adapter")
    @classmethod
    def _check_adapter(cls, value: Path | None) -> Path | None:
        if value is not None and not (value / "adapter_config.json").is_file():
            raise ValueError(f"'{value}' is not a LoRA adapter folder (no adapter_config.json)")
        if value is not None:  # an adapter add-tool wrote: the adapters it extends must be there, unchanged
            from agent_core.planner.llm import adapter_layers

            adapter_layers(value)
        return value


class QueueSection(_Strict):
    """How tool runs are queued: ``embedded`` (no external server) or ``redis`` (a broker URL).

    ``redis`` mode: ``broker_url`` carries the tasks; ``result_backend_url`` (default: the broker URL) keeps
    the small task results that join a job's independent actions before it is encoded (a chord). Workers
    started with ``medagent worker`` read the same file. Times are seconds.

    - ``visibility_timeout_seconds``: how long a task a worker took may stay unacknowledged before Redis
      hands it to another worker. It must exceed the longest tool run (a task still running past it is run a
      second time, idempotently, elsewhere) and it is how long the task of a crashed worker waits.
    - ``time_limits``: how long each tool (by canonical name) may run before its action fails with a
      message and the job goes on; ``default_time_limit_seconds`` for the tools not named (and for the
      encoding step, ``finalize_job``). A tool that ignores the soft limit is killed
      ``time_limit_grace_seconds`` later. The node writes the limits on each task it sends; the processes
      of ``medagent worker`` enforce them (the embedded worker runs tasks in its own process, without).
    - ``max_retries``, ``retry_backoff_seconds``, ``retry_backoff_max_seconds``: a task that meets a
      transient error (shared storage or index unreachable, a dropped connection) is retried with
      exponential backoff; a tool that raises is never retried, its action fails at once.
    - ``preload_models``: ``medagent worker`` loads the weights of the tools of its queues when each worker
      process starts, instead of at their first run.
    """

    mode: QueueMode = QueueMode.EMBEDDED
    broker_url: str | None = None
    result_backend_url: str | None = None
    visibility_timeout_seconds: float = Field(3600.0, ge=1)
    default_time_limit_seconds: float = Field(1800.0, gt=0)
    time_limits: dict[str, float] = Field(default_factory=dict)
    time_limit_grace_seconds: float = Field(30.0, gt=0)
    max_retries: int = Field(5, ge=0, le=100)
    retry_backoff_seconds: float = Field(2.0, gt=0)
    retry_backoff_max_seconds: float = Field(60.0, gt=0)
    preload_models: bool = True

    @field_validator("time_limits")
    @classmethod
    def _check_time_limits(cls, value: dict[str, float]) -> dict[str, float]:
        for tool, seconds in value.items():
            if seconds <= 0:
                raise ValueError(f"'{tool}': {seconds!r} must be a number of seconds above 0")
        return {tool.strip().lower(): seconds for tool, seconds in value.items()}

    @model_validator(mode="after")
    def _check_broker(self) -> QueueSection:
        if self.mode is QueueMode.REDIS and not (self.broker_url or "").startswith(("redis://", "rediss://")):
            raise ValueError(f"broker_url '{self.broker_url}' must be a redis:// URL when mode is 'redis'")
        if self.result_backend_url is not None and not self.result_backend_url.startswith(
            ("redis://", "rediss://")
        ):
            raise ValueError(f"result_backend_url '{self.result_backend_url}' must be a redis:// URL")
        if self.retry_backoff_max_seconds >= self.visibility_timeout_seconds:
            raise ValueError(
                f"retry_backoff_max_seconds {self.retry_backoff_max_seconds:g} must be below"
                f" visibility_timeout_seconds {self.visibility_timeout_seconds:g}: a task waiting for its"
                " retry would be handed to another worker"
            )
        return self

    def time_limit(self, tool: str) -> float:
        """The soft time limit of ``tool`` (its canonical name), in seconds."""
        return self.time_limits.get(tool.lower(), self.default_time_limit_seconds)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for reprs, logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


class IndexSection(_Strict):
    """Where the index (studies, instances, jobs, outbox, audit) lives.

    ``url`` null (the default) keeps it in ``<node.storage>/index.sqlite3``: SQLite in WAL mode, no
    server. ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`` keeps the same tables in an existing
    PostgreSQL database (created there when missing), so that several listeners and the workers on other
    machines share one index. The password is masked in ``repr`` and error messages; the node hands the
    URL to its embedded worker through ``<node.storage>/effective-config.yaml``.
    """

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"'{redact_url(value)}' is not a valid URL: {exc}") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"'{redact_url(value)}' must be a postgresql:// URL, or null for SQLite in node.storage"
            )
        if not parts.hostname and "host=" not in parts.query:
            raise ValueError(f"'{redact_url(value)}' must name the host: postgresql://HOST/DATABASE")
        if not parts.path.strip("/"):
            raise ValueError(f"'{redact_url(value)}' must name the database: postgresql://HOST/DATABASE")
        return value

    def __repr_args__(self) -> Any:
        yield "url", None if self.url is None else redact_url(self.url)


class DeliverySection(_Strict):
    """Outbox retry policy: exponential backoff from ``retry_initial_seconds`` up to the maximum."""

    retry_initial_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(600.0, gt=0)
    give_up_after_hours: float = Field(72.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)


class ModelsSection(_Strict):
    """Engine settings: the torch device (``auto`` is CUDA when present) and the weights a user supplies.

    Every path is optional: without it the tool falls back to the engine that runs here (packaged weights
    or a classical engine, named as such in its output). Nothing is downloaded at run time.

    - ``medsam_checkpoint``: a MedSAM (or SAM) ViT checkpoint in segment-anything's ``.pth`` format;
    - ``grounding_dino``: a Grounding DINO folder written by transformers' ``save_pretrained`` (model and
      processor);
    - ``biomedclip``: an open_clip model folder (``open_clip_config.json`` and
      ``open_clip_pytorch_model.bin``, plus the tokenizer files its text tower names), as BiomedCLIP is
      published;
    - ``llava_med``: a LLaVA(-Med) folder written by ``save_pretrained`` (model and processor);
    - ``llm``: a causal language model folder written by ``save_pretrained`` (model and tokenizer) used for
      report rewriting and answers instead of the packaged SmolLM2-135M-Instruct;
    - ``knowledge_base``: a folder of Markdown files for retrieval instead of the repository's
      ``knowledge/``.
    """

    device: str = "auto"
    medsam_checkpoint: Path | None = None
    grounding_dino: Path | None = None
    biomedclip: Path | None = None
    llava_med: Path | None = None
    llm: Path | None = None
    knowledge_base: Path | None = None

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"'{value}' must be auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("medsam_checkpoint")
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"'{value}' is not a readable file")
        return value

    @field_validator("grounding_dino", "biomedclip", "llava_med", "llm", "knowledge_base")
    @classmethod
    def _check_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"'{value}' is not a folder")
        return value


class AdminSection(_Strict):
    """The admin REST API (``dicom_node.admin``): where it listens and the bearer token it requires.

    Without a ``token`` (here or in the environment variable ``MEDAGENT_ADMIN_TOKEN``, which wins) the API
    is not started at all: the node never serves an unauthenticated admin API. ``port`` 0 takes a free
    port (tests). The token is masked in ``repr`` and never written out by ``model_dump``.
    """

    bind: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: SecretStr | None = None

    @field_validator("token", mode="before")
    @classmethod
    def _check_token(cls, value: Any) -> Any:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is None:
            return None
        if not isinstance(text, str):
            raise ValueError("must be a string")
        if len(text.strip()) < 16 or text != text.strip():
            raise ValueError("must be at least 16 characters with no surrounding spaces (value not shown)")
        return value

    @field_serializer("token")
    def _never_dump_token(self, value: SecretStr | None) -> None:
        return None


class Settings(_Strict):
    """The whole node configuration."""

    node: NodeSection = NodeSection()
    sources: list[Source] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    queue: QueueSection = QueueSection()
    index: IndexSection = IndexSection()
    planner: PlannerSection = PlannerSection()
    delivery: DeliverySection = DeliverySection()
    models: ModelsSection = ModelsSection()
    admin: AdminSection = AdminSection()

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        names = [d.name for d in self.destinations]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"destinations: name '{name}' is used more than once")
        route_names = [r.name for r in self.routes]
        for i, route in enumerate(self.routes):
            if route_names.count(route.name) > 1:
                raise ValueError(f"routes[{i}].name: '{route.name}' is used more than once")
            for name in route.destinations:
                if name not in names:
                    raise ValueError(
                        f"routes[{i}].destinations: '{name}' is not a configured destination (known: {names})"
                    )
        return self

    def with_absolute_storage(self) -> Settings:
        """The same settings with ``node.storage`` made absolute (against the working folder)."""
        storage = Path(self.node.storage).expanduser().resolve()
        return self.model_copy(update={"node": self.node.model_copy(update={"storage": storage})})

    def destination(self, name: str) -> Destination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise KeyError(name)


def _format_location(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


#: the environment variable that holds the admin API's bearer token (wins over ``admin.token``)
ADMIN_TOKEN_VARIABLE = "MEDAGENT_ADMIN_TOKEN"


def _apply_environment(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for name, value in environ.items():
        if not name.startswith("MEDAGENT__"):
            continue
        path = [p.lower() for p in name[len("MEDAGENT__") :].split("__") if p]
        if len(path) < 2:
            continue
        section = data.setdefault(path[0], {})
        for key in path[1:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = yaml.safe_load(value)
    token = environ.get(ADMIN_TOKEN_VARIABLE)
    if token:
        admin = data.get("admin")
        data["admin"] = {**(admin if isinstance(admin, dict) else {}), "token": token}
    return data


def parse_settings(data: Any, origin: str = "<config>", environ: dict[str, str] | None = None) -> Settings:
    """Validate a parsed YAML mapping; raise ``ConfigError`` naming the first bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections, not {type(data).__name__}")
    data = _apply_environment(dict(data), dict(os.environ) if environ is None else environ)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        errors = validation_messages(exc)
        lines = [f"{key or '(top level)'}: {message}" for key, message in errors]
        raise ConfigError(f"{origin}: invalid configuration\n  " + "\n  ".join(lines), errors) from None


def validation_messages(exc: ValidationError) -> list[tuple[str, str]]:
    """``(key path, message)`` for each error of ``exc``; the path is ``""`` for a whole-model error."""
    errors = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        errors.append((_format_location(tuple(error["loc"])), message))
    return errors


def load_settings(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Settings:
    """Read and validate the YAML file at ``path``; a relative storage path is relative to the working folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    settings = parse_settings(data, origin=str(path), environ=environ)
    return settings.with_absolute_storage()
