"""The admin REST API (FastAPI): configuration, studies, jobs, the audit log, metrics and questions.

Every route but ``GET /health`` requires ``Authorization: Bearer <admin.token>`` (401 without it or with
another token; the token is compared in constant time and never logged). The OpenAPI document is
``GET /openapi.json`` (with the token). Errors are JSON: ``{"detail": "..."}`` for 401, 404 and 409;
for 422, FastAPI's list ``{"detail": [{"loc": ["body", "port"], "msg": "...", "type": "..."}]}`` whose
``loc`` names the field, whether the request's shape or the whole configuration check found it.

The web console (``/console/``, static files from ``console/`` next to this module; ``/`` leads there) is
served without a token: it holds no data, asks for the token and sends it with every request.

``create_app(node, store, token)`` needs a ``dicom_node.node.Node`` (started or not) and the
``ConfigStore`` that edits its configuration. (No ``from __future__ import annotations`` here: FastAPI
reads the annotations of the route functions, some of which name objects local to ``create_app``.)
"""

import hmac
import logging
import threading
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request, Response, status
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from config import ConfigError, Destination, Route, Source
from dicom_node.admin import schemas, views
from dicom_node.admin.ask import Question, answer_question, prepare_question
from dicom_node.admin.config_store import ConfigStore, source_id
from dicom_node.admin.echo import echo_destination
from dicom_node.admin.errors import EntityConflict, EntityNotFound, InvalidEntity
from dicom_node.admin.metrics import metrics_registry
from dicom_node.admin.previews import PictureCache, key_image_png

if TYPE_CHECKING:
    from dicom_node.node import Node

__all__ = ["create_app"]
logger = logging.getLogger(__name__)

_PROBLEM = {"model": schemas.Problem}
_NOT_FOUND = {404: {**_PROBLEM, "description": "no such entity"}}
_CONFLICT = {409: {**_PROBLEM, "description": "the key exists already, or something still refers to it"}}
_PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}
#: the web console: static HTML, CSS and JavaScript modules, served without a token (they hold no data)
CONSOLE = FilePath(__file__).resolve().parent / "console"
Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many, newest first")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="skip this many")]


def _unprocessable(errors: list[tuple[str, str]], where: str = "body") -> JSONResponse:
    detail = [
        {"type": "value_error", "loc": [where, *[part for part in field.split(".") if part]], "msg": message}
        for field, message in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _sent_fields(body: BaseModel) -> dict[str, Any]:
    """The fields a request body set, as JSON values; those it left out keep the configuration's defaults."""
    return body.model_dump(mode="json", exclude_unset=True)


def _png_response(png: bytes) -> Response:
    """A PNG of patient images, which browsers and proxies must not keep."""
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})


def _source_entry(source: Source) -> schemas.SourceEntry:
    return schemas.SourceEntry(id=source_id(source), **source.model_dump(mode="json"))


def _listening_port(node: "Node") -> int | None:
    try:
        return node.scp.port
    except AttributeError:  # no listener: the SCP is not started
        return None


def create_app(node: "Node", store: ConfigStore, token: str) -> FastAPI:
    """The API of ``node``; ``token`` is the bearer token every route but ``/health`` requires."""
    if len(token) < 16:
        raise ValueError("Invalid 'token' - the admin token must be at least 16 characters")
    expected = token.encode()
    bearer = HTTPBearer(auto_error=False, description="admin.token, or MEDAGENT_ADMIN_TOKEN")
    asking = threading.Lock()  # one question at a time: tools are heavy
    registry = metrics_registry(node.index, lambda: _listening_port(node) is not None)
    pictures = PictureCache(node.settings, node.index)

    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(
                401,
                "the bearer token is not valid",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    app = FastAPI(
        title="MedAgent Node admin API",
        version="1",
        description=__doc__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    api = APIRouter(
        dependencies=[Depends(authorised)], responses={401: {**_PROBLEM, "description": "no or wrong token"}}
    )

    @app.exception_handler(EntityNotFound)
    def _not_found(request: Request, exc: EntityNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(EntityConflict)
    def _conflict(request: Request, exc: EntityConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(InvalidEntity)
    def _invalid(request: Request, exc: InvalidEntity) -> JSONResponse:
        return _unprocessable(exc.errors)

    @app.exception_handler(ConfigError)
    def _config_broken(request: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the configuration file cannot be used as it is: {exc}"}, status_code=409
        )

    @app.get("/health", response_model=schemas.Health, tags=["node"])
    def health(response: Response) -> schemas.Health:
        """Liveness without a token: whether the SCP listens (and the embedded worker runs)."""
        listening = _listening_port(node) is not None
        worker = getattr(node, "_worker", None)
        running = (
            None
            if node.settings.queue.mode.value != "embedded"
            else worker is not None and worker.poll() is None
        )
        if not listening:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return schemas.Health(
            status="ok" if listening else "degraded", scp_listening=listening, worker_running=running
        )

    @api.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @api.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["node"],
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    def metrics() -> Response:
        """Prometheus text exposition: studies, jobs, actions, deliveries by state; associations; spool."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # -- the node's own AE ------------------------------------------------------------------------------

    @api.get("/config/ae", response_model=schemas.NodeAE, tags=["config"])
    def get_ae() -> schemas.NodeAE:
        """The node's AE title, port and bind address, and the port its SCP listens on now."""
        identity = store.identity()
        return schemas.NodeAE(**identity.model_dump(), listening_port=_listening_port(node))

    @api.put("/config/ae", response_model=schemas.NodeAE, tags=["config"], responses=_CONFLICT)
    def put_ae(body: schemas.NodeAEUpdate) -> schemas.NodeAE:
        """Change the node's AE title and port (and bind address): effective at once, persisted.

        A new port is opened before the old one closes; 409 when it cannot be (in use), and nothing changes.
        """
        try:
            identity = store.update_identity(body.model_dump(exclude_none=True))
        except OSError as exc:
            where = f"{body.bind or store.settings.node.bind}:{body.port}"
            raise EntityConflict(f"cannot listen on {where}: {exc.strerror or exc}") from None
        return schemas.NodeAE(**identity.model_dump(), listening_port=_listening_port(node))

    # -- sources ----------------------------------------------------------------------------------------

    @api.get("/config/sources", response_model=schemas.SourceList, tags=["config"])
    def list_sources() -> schemas.SourceList:
        """Calling AE titles allowed to send studies (with the host each must call from, if any)."""
        return schemas.SourceList(sources=[_source_entry(s) for s in store.entries("sources")])

    @api.post(
        "/config/sources",
        response_model=schemas.SourceEntry,
        status_code=201,
        tags=["config"],
        responses=_CONFLICT,
    )
    def create_source(
        body: Source, position: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None
    ) -> schemas.SourceEntry:
        """Allow a calling AE title (optionally from one host only); the SCP accepts it at once."""
        return _source_entry(store.create("sources", _sent_fields(body), position))

    @api.get(
        "/config/sources/{source_id:path}",
        response_model=schemas.SourceEntry,
        tags=["config"],
        responses=_NOT_FOUND,
    )
    def get_source(source_id: str) -> schemas.SourceEntry:
        return _source_entry(store.entry("sources", source_id))

    @api.put(
        "/config/sources/{source_id:path}",
        response_model=schemas.SourceEntry,
        tags=["config"],
        responses={**_NOT_FOUND, **_CONFLICT},
    )
    def put_source(source_id: str, body: Source) -> schemas.SourceEntry:
        """Replace a source; its id changes with its AE title or host (409 if taken)."""
        return _source_entry(store.replace("sources", source_id, _sent_fields(body)))

    @api.delete("/config/sources/{source_id:path}", status_code=204, tags=["config"], responses=_NOT_FOUND)
    def delete_source(source_id: str) -> Response:
        """Stop accepting this source: its next association is rejected."""
        store.delete("sources", source_id)
        return Response(status_code=204)

    # -- destinations ---------------------------------------------------------------------------------

    @api.get("/config/destinations", response_model=schemas.DestinationList, tags=["config"])
    def list_destinations() -> schemas.DestinationList:
        return schemas.DestinationList(destinations=store.entries("destinations"))

    @api.post(
        "/config/destinations",
        response_model=Destination,
        status_code=201,
        tags=["config"],
        responses=_CONFLICT,
    )
    def create_destination(body: Destination) -> Destination:
        """Add a peer that receives results; test it with ``GET /config/destinations/{name}/cecho``."""
        return store.create("destinations", _sent_fields(body))

    @api.get(
        "/config/destinations/{name:path}/cecho",
        response_model=schemas.EchoResponse,
        tags=["config"],
        responses=_NOT_FOUND,
    )
    def echo(name: str) -> schemas.EchoResponse:
        """C-ECHO the destination from the node's AE title; ``success`` false with the reason otherwise."""
        destination = store.entry("destinations", name)
        result = echo_destination(store.settings, destination)
        logger.info("C-ECHO to '%s': %s", name, result.message)
        return schemas.EchoResponse(**result.to_dict())

    @api.get(
        "/config/destinations/{name:path}", response_model=Destination, tags=["config"], responses=_NOT_FOUND
    )
    def get_destination(name: str) -> Destination:
        return store.entry("destinations", name)

    @api.put(
        "/config/destinations/{name:path}",
        response_model=Destination,
        tags=["config"],
        responses={**_NOT_FOUND, **_CONFLICT},
    )
    def put_destination(name: str, body: Destination) -> Destination:
        """Replace a destination (its ``name`` must stay); the outbox uses it from its next try."""
        return store.replace("destinations", name, _sent_fields(body))

    @api.delete(
        "/config/destinations/{name:path}",
        status_code=204,
        tags=["config"],
        responses={**_NOT_FOUND, **_CONFLICT},
    )
    def delete_destination(name: str) -> Response:
        """Remove a destination; 409 while a route sends to it."""
        store.delete("destinations", name)
        return Response(status_code=204)

    # -- routes -----------------------------------------------------------------------------------------

    @api.get("/config/routes", response_model=schemas.RouteList, tags=["config"])
    def list_routes() -> schemas.RouteList:
        return schemas.RouteList(routes=store.entries("routes"))

    @api.post("/config/routes", response_model=Route, status_code=201, tags=["config"], responses=_CONFLICT)
    def create_route(
        body: Route,
        position: Annotated[
            int | None, Query(ge=0, le=2**31 - 1, description="place in the list (default: last)")
        ] = None,
    ) -> Route:
        """Add a routing rule; studies that arrive from now on are matched against it (first match wins)."""
        return store.create("routes", _sent_fields(body), position)

    @api.get("/config/routes/{name:path}", response_model=Route, tags=["config"], responses=_NOT_FOUND)
    def get_route(name: str) -> Route:
        return store.entry("routes", name)

    @api.put("/config/routes/{name:path}", response_model=Route, tags=["config"], responses=_NOT_FOUND)
    def put_route(name: str, body: Route) -> Route:
        """Replace a route (its ``name`` must stay) at its place in the list."""
        return store.replace("routes", name, _sent_fields(body))

    @api.delete("/config/routes/{name:path}", status_code=204, tags=["config"], responses=_NOT_FOUND)
    def delete_route(name: str) -> Response:
        store.delete("routes", name)
        return Response(status_code=204)

    # -- studies and jobs -------------------------------------------------------------------------------

    @api.get("/studies", response_model=schemas.StudyList, tags=["studies"])
    def list_studies(
        limit: Limit = 100,
        offset: Offset = 0,
        state: Annotated[str | None, Query(description="receiving | complete | unrouted")] = None,
    ) -> schemas.StudyList:
        rows = node.index.study_list(state=state, limit=limit, offset=offset)
        return schemas.StudyList(studies=[views.study_summary(row) for row in rows])

    @api.get(
        "/studies/{study_instance_uid}",
        response_model=schemas.StudyDetail,
        tags=["studies"],
        responses=_NOT_FOUND,
    )
    def get_study(study_instance_uid: str) -> dict[str, Any]:
        return views.study_detail(node.index, study_instance_uid)

    @api.post(
        "/studies/{study_instance_uid}/process",
        response_model=schemas.ProcessResponse,
        tags=["studies"],
        responses=_NOT_FOUND,
    )
    def process_study(study_instance_uid: str) -> schemas.ProcessResponse:
        """Complete the study now (no waiting for its timers), plan it and dispatch its jobs."""
        if node.index.study(study_instance_uid) is None:
            raise EntityNotFound("study", study_instance_uid)
        return schemas.ProcessResponse(
            study_instance_uid=study_instance_uid, job_ids=node.process_now(study_instance_uid)
        )

    @api.post(
        "/studies/{study_instance_uid}/ask",
        response_model=schemas.AskResponse,
        tags=["studies"],
        responses={
            **_NOT_FOUND,
            202: {"model": schemas.AskAccepted, "description": "planned and running (wait false)"},
            409: {**_PROBLEM, "description": "the study has no image series"},
        },
    )
    def ask(study_instance_uid: str, body: Annotated[schemas.AskRequest, Body()]) -> Any:
        """Ask the agent about the study: the planner plans, the tools run in the node, the answer comes
        back with the plan and each result. With ``send_sr`` the results and the answer (SR) go to the
        destinations through the outbox. One question runs at a time; on a CPU a segmentation takes minutes,
        so a browser may send ``wait: false`` and follow ``/jobs/{job_id}``."""
        question = prepare_question(
            store.settings,
            node.index,
            node.registry,
            study_instance_uid,
            body.question,
            series_instance_uid=body.series_instance_uid,
            send_sr=body.send_sr,
            destinations=body.destinations,
        )
        if body.wait:
            with asking:
                return answer_question(store.settings, node.index, node.registry, question).to_dict()
        threading.Thread(target=answer_later, args=(question,), name="medagent-ask", daemon=True).start()
        accepted = schemas.AskAccepted(
            job_id=question.job_id,
            study_instance_uid=question.study_instance_uid,
            series_instance_uid=question.series_instance_uid,
            question=question.question,
            plan=question.plan.to_dict(),
            job_url=f"/jobs/{question.job_id}",
        )
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202)

    def answer_later(question: Question) -> None:
        try:
            with asking:
                answer_question(store.settings, node.index, node.registry, question)
        except Exception as exc:
            logger.exception("job %s: the question could not be answered", question.job_id)
            node.index.set_job_state(question.job_id, "failed", f"{type(exc).__name__}: {exc}")

    @api.get("/jobs", response_model=schemas.JobList, tags=["jobs"])
    def list_jobs(
        limit: Limit = 100,
        offset: Offset = 0,
        state: Annotated[str | None, Query(description="queued | running | done | failed")] = None,
        study_instance_uid: str | None = None,
    ) -> schemas.JobList:
        rows = node.index.job_list(
            state=state, study_instance_uid=study_instance_uid, limit=limit, offset=offset
        )
        return schemas.JobList(jobs=[views.job_summary(row) for row in rows])

    @api.get("/jobs/{job_id}", response_model=schemas.JobDetail, tags=["jobs"], responses=_NOT_FOUND)
    def get_job(job_id: str) -> dict[str, Any]:
        """The plan (thoughts, actions, value), each action's state, timing and result, outputs, deliveries."""
        return views.job_detail(store.settings, node.index, job_id)

    @api.post(
        "/jobs/{job_id}/resubmit",
        response_model=schemas.ResubmitResponse,
        tags=["jobs"],
        responses=_NOT_FOUND,
    )
    def resubmit(
        job_id: str, body: Annotated[schemas.ResubmitRequest | None, Body()] = None
    ) -> schemas.ResubmitResponse:
        """Queue the job's dead-letter deliveries (and, if asked, delivered ones) for an immediate try."""
        body = body or schemas.ResubmitRequest()
        if node.index.job(job_id) is None:
            raise EntityNotFound("job", job_id)
        known = [destination.name for destination in store.settings.destinations]
        if body.destination is not None and body.destination not in known:
            raise InvalidEntity(
                [("destination", f"'{body.destination}' is not a configured destination (known: {known})")]
            )
        states = ("dead", "delivered") if body.include_delivered else ("dead",)
        queued = sum(
            node.index.resubmit_deliveries(
                sop_instance_uid=row["sop_instance_uid"], destination=body.destination, states=states
            )
            for row in node.index.outputs(job_id)
        )
        logger.info("job %s: %d deliveries queued again", job_id, queued)
        return schemas.ResubmitResponse(job_id=job_id, queued=queued)

    @api.get(
        "/jobs/{job_id}/frames",
        response_model=schemas.JobFrames,
        tags=["jobs"],
        responses={**_NOT_FOUND, **_CONFLICT},
    )
    def job_frames(job_id: str) -> dict[str, Any]:
        """The job's series for a viewer: frame count and sources, the key frame, the structures its
        actions outlined (colour, voxels, frames) and the boxes they drew."""
        return pictures.job(job_id).summary()

    @api.get(
        "/jobs/{job_id}/frames/{frame}",
        response_class=Response,
        tags=["jobs"],
        responses={**_PNG, **_NOT_FOUND, **_CONFLICT},
    )
    def job_frame(
        job_id: str,
        frame: Annotated[int, Path(ge=0, le=2**31 - 1, description="0-based, in slice order")],
        overlay: Annotated[bool, Query(description="draw the masks, boxes and legend")] = True,
    ) -> Response:
        """A frame of the job's series as PNG, windowed as the key image is, with the job's masks and boxes
        drawn over it as on the key image (SC); ``overlay=false``: the same frame without them."""
        png = pictures.job(job_id).frame_png(frame, overlay)
        return _png_response(png)

    @api.get(
        "/jobs/{job_id}/key-images/{sop_instance_uid}",
        response_class=Response,
        tags=["jobs"],
        responses={**_PNG, **_NOT_FOUND},
    )
    def key_image(job_id: str, sop_instance_uid: str) -> Response:
        """One of the job's key images (its Secondary Capture outputs, in ``outputs``) as PNG."""
        if node.index.job(job_id) is None:
            raise EntityNotFound("job", job_id)
        png = key_image_png(node.index, job_id, sop_instance_uid)
        return _png_response(png)

    @api.get("/associations", response_model=schemas.AssociationList, tags=["node"])
    def list_associations(
        limit: Limit = 100,
        offset: Offset = 0,
        outcome: Annotated[
            str | None, Query(description="open | released | aborted | rejected | interrupted")
        ] = None,
        calling_ae_title: str | None = None,
    ) -> schemas.AssociationList:
        """The association audit log: who connected, when, what was stored, how it ended."""
        rows = node.index.association_log(
            outcome=outcome, calling_ae_title=calling_ae_title, limit=limit, offset=offset
        )
        return schemas.AssociationList(associations=[views.association(row) for row in rows])

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console/")

    app.mount("/console", StaticFiles(directory=CONSOLE, html=True), name="console")
    return app
