"""Request and response bodies of the admin API, as they appear in its OpenAPI document.

Configuration entities are the models of ``config.settings`` themselves (``Source``, ``Destination``,
``Route``), so the API accepts exactly what the YAML file accepts. Times are UNIX seconds (UTC).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from config import Destination, Route, Source


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceEntry(Source):
    """A configured source and its key in ``/config/sources/{id}``: the AE title, or ``AE@host``."""

    id: str


class SourceList(BaseModel):
    sources: list[SourceEntry]


class DestinationList(BaseModel):
    destinations: list[Destination]


class RouteList(BaseModel):
    """Routes in the order they are tried: the first that matches a study wins."""

    routes: list[Route]


class NodeAE(BaseModel):
    """The node's AE title and listening address as configured, and the port its SCP listens on now."""

    ae_title: str
    port: int
    bind: str
    listening_port: int | None = Field(None, description="null when the SCP is not listening")


class NodeAEUpdate(_Body):
    """New AE title and port (and bind address; kept when omitted) for the node's SCP."""

    ae_title: str = Field(min_length=1, max_length=16)
    port: int = Field(ge=1, le=65535)
    bind: str | None = None


class EchoResponse(BaseModel):
    """A C-ECHO from the node's AE title to a destination; ``success`` false says why in ``message``."""

    destination: str
    ae_title: str
    host: str
    port: int
    success: bool
    status: int | None = Field(None, description="DIMSE status when the peer answered")
    message: str
    elapsed_ms: float


class StudySummary(BaseModel):
    study_instance_uid: str
    calling_ae_title: str
    route: str | None
    state: str = Field(description="receiving | complete | unrouted")
    first_received_at: float
    last_received_at: float
    instances: int
    series: int
    jobs: int


class StudyList(BaseModel):
    studies: list[StudySummary]


class SeriesSummary(BaseModel):
    series_instance_uid: str
    instances: int
    size: int = Field(description="bytes as received")
    first_received_at: float
    last_received_at: float
    attributes: dict[str, str] = Field(description="Modality, BodyPartExamined, SeriesDescription, ...")


class JobSummary(BaseModel):
    job_id: str
    study_instance_uid: str
    series_instance_uid: str
    route: str | None = Field(description="null for a question (ask)")
    instruction: str
    tools: list[str]
    destinations: list[str]
    state: str = Field(description="queued | running | done | failed")
    created_at: float
    updated_at: float
    error: str | None


class StudyDetail(BaseModel):
    study_instance_uid: str
    calling_ae_title: str
    route: str | None
    state: str
    first_received_at: float
    last_received_at: float
    instances: int
    series: list[SeriesSummary]
    jobs: list[JobSummary]


class ProcessResponse(BaseModel):
    """Jobs made by "process now"; empty when nothing was pending (the study had not changed)."""

    study_instance_uid: str
    job_ids: list[str]


class JobList(BaseModel):
    jobs: list[JobSummary]


class PlanAction(BaseModel):
    API_name: str
    API_params: dict[str, Any] = Field(default_factory=dict)


class PlanBody(BaseModel):
    """The planner's plan (MMedAgent's format)."""

    thoughts: str
    actions: list[PlanAction]
    value: str


class ActionResult(BaseModel):
    """What an action returned (masks as their labels only)."""

    status: str | None
    engine: str | None
    engine_version: str | None
    structures: list[str]
    boxes: int
    labels: dict[str, float]
    measurements: list[dict[str, Any]]
    text: str
    sources: list[dict[str, Any]]
    error: str


class ActionState(BaseModel):
    index: int
    API_name: str
    API_params: dict[str, Any]
    state: str = Field(description="pending | running | ok | unavailable | failed")
    engine: str | None
    started_at: float | None
    finished_at: float | None
    seconds: float | None
    error: str | None
    result: ActionResult | None


class OutputObject(BaseModel):
    sop_instance_uid: str
    kind: str = Field(description="SEG | SR | SC")
    sop_class_uid: str
    created_at: float


class Delivery(BaseModel):
    sop_instance_uid: str
    kind: str
    destination: str
    state: str = Field(description="pending | delivered | dead")
    attempts: int
    last_status: int | None
    last_error: str | None
    first_attempt_at: float | None
    next_attempt_at: float
    delivered_at: float | None


class StoredAnswer(BaseModel):
    question: str
    answer: str
    engine: str
    note: str
    answered_at: float


class JobDetail(JobSummary):
    plan: PlanBody
    actions: list[ActionState]
    outputs: list[OutputObject]
    deliveries: list[Delivery]
    answer: StoredAnswer | None = Field(description="the question and answer when the job was a question")


class ResubmitRequest(_Body):
    """Which deliveries of the job's objects to queue again: dead letters by default."""

    destination: str | None = Field(None, description="only this destination")
    include_delivered: bool = Field(False, description="send objects that were delivered again too")


class ResubmitResponse(BaseModel):
    job_id: str
    queued: int = Field(description="deliveries queued for an immediate try")


class Association(BaseModel):
    association_id: str
    calling_ae_title: str | None
    called_ae_title: str | None
    address: str | None
    started_at: float
    ended_at: float | None
    outcome: str = Field(description="open | released | aborted | rejected | interrupted")
    instances: int
    duplicates: int
    failed: int
    detail: str | None


class AssociationList(BaseModel):
    associations: list[Association]


class AskRequest(_Body):
    """A free-text question about the study, e.g. "How large is the left lung?"."""

    question: str = Field(min_length=1, max_length=2000)
    series_instance_uid: str | None = Field(None, description="default: the study's largest image series")
    send_sr: bool = Field(False, description="also send the results and the answer (SR) to the PACS")
    destinations: list[str] | None = Field(None, description="for send_sr; default: the study's route's")
    wait: bool = Field(
        True, description="false: answer 202 once the plan is made; the answer then appears in /jobs/{job_id}"
    )


class AskResponse(BaseModel):
    job_id: str
    study_instance_uid: str
    series_instance_uid: str
    question: str
    plan: PlanBody
    answer: str
    answer_engine: str = Field(
        description="template, or llm when a language model's answer passed the checks"
    )
    note: str
    results: list[dict[str, Any]] = Field(description="each action's result summary, in plan order")
    destinations: list[str]
    outputs: list[str] = Field(description="SOP Instance UIDs queued for the destinations (send_sr)")
    reused: bool = Field(description="the same question on the same instances was answered before")


class AskAccepted(BaseModel):
    """A question planned and running (``wait`` false): watch ``/jobs/{job_id}`` for its actions and answer."""

    job_id: str
    study_instance_uid: str
    series_instance_uid: str
    question: str
    plan: PlanBody
    job_url: str


class Health(BaseModel):
    status: str = Field(description="ok, or degraded when the SCP is not listening")
    scp_listening: bool
    worker_running: bool | None = Field(None, description="the embedded worker; null in redis mode")


class Problem(BaseModel):
    """An error: ``detail`` says what is wrong."""

    detail: str


class FrameStructure(BaseModel):
    label: str
    color: list[int] = Field(description="RGB, the segment's colour in the SEG and on the key image")
    voxels: int
    frames: list[int] = Field(description="0-based frames (slice order) where the mask has pixels")


class FrameBox(BaseModel):
    label: str
    frame: int
    xyxy: list[float] = Field(description="pixels: left, top, right, bottom")
    color: list[int]


class JobFrames(BaseModel):
    """A job's series as the console steps through it: ``GET /jobs/{job_id}/frames/{frame}`` renders one."""

    job_id: str
    series_instance_uid: str
    frames: int
    key_frame: int = Field(description="the frame the job's key image shows")
    sop_instance_uids: list[str] = Field(description="the source instance of each frame, in slice order")
    structures: list[FrameStructure]
    boxes: list[FrameBox]
