"""The admin commands of ``medagent``, sharing their code with the REST API.

- ``medagent ae list|add|remove``: the node's AE and the source AE titles allowed to send studies;
- ``medagent destinations list|add|remove|echo``: peers that receive results, and a C-ECHO test;
- ``medagent routes list|add|remove``: routing rules (first match wins);
- ``medagent jobs [JOB_ID]``: jobs, newest first, or one job in full (plan, actions, outputs, deliveries);
- ``medagent ask STUDY_UID "question"``: plan, run the tools, print the answer (with a progress bar).

Configuration commands edit the YAML file given by ``--config`` through ``ConfigStore`` (validated as a
whole, written atomically, comments kept); a running node started with that file applies the change
within a second, without a restart. Exit status: 0 done, 1 not found, a conflict or a failed C-ECHO, 2 an
invalid value (the message names the field).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_node.admin.config_store import ConfigStore, source_id
from dicom_node.admin.errors import EntityConflict, EntityNotFound, InvalidEntity

__all__ = ["add_admin_commands"]

DEFAULT_CONFIG = Path("config/node.example.yaml")


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(arguments: argparse.Namespace) -> int:
        try:
            return handler(arguments)
        except InvalidEntity as exc:
            for field, message in exc.errors:
                print(f"medagent: {field or 'value'}: {message}", file=sys.stderr)
            return 2
        except (EntityConflict, EntityNotFound) as exc:
            print(f"medagent: {exc}", file=sys.stderr)
            return 1

    return run


def _store(arguments: argparse.Namespace) -> ConfigStore:
    return ConfigStore(arguments.config)


def _saved(store: ConfigStore, change: str) -> int:
    """Print ``change`` and where ``store`` saved it; the exit status, 0."""
    print(change)
    print(f"saved to {store.path}; a node running with this file applies it within a second")
    return 0


def _remove(arguments: argparse.Namespace, kind: str, key: str, noun: str) -> int:
    """Remove the entry ``key`` of ``kind`` (``sources``, ``destinations``, ``routes``) from ``--config``."""
    store = _store(arguments)
    store.delete(kind, key)
    return _saved(store, f"{noun} {key} removed")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=1, default=str))


# -- ae ---------------------------------------------------------------------------------------------------


def _ae_list(arguments: argparse.Namespace) -> int:
    store = _store(arguments)
    identity = store.identity()
    sources = store.entries("sources")
    if arguments.json:
        _print_json(
            {
                "node": identity.model_dump(),
                "sources": [{"id": source_id(s), **s.model_dump(mode="json")} for s in sources],
            }
        )
        return 0
    print(f"node AE title {identity.ae_title} on {identity.bind}:{identity.port}")
    print(f"{len(sources)} source AE title(s) allowed to send:")
    for source in sources:
        print(f"  {source.ae_title}" + (f"  (only from {source.host})" if source.host else ""))
    return 0


def _ae_add(arguments: argparse.Namespace) -> int:
    store = _store(arguments)
    data: dict[str, Any] = {"ae_title": arguments.ae_title}
    if arguments.host:
        data["host"] = arguments.host
    source = store.create("sources", data)
    return _saved(store, f"source {source_id(source)} added")


def _ae_remove(arguments: argparse.Namespace) -> int:
    key = arguments.ae_title if not arguments.host else f"{arguments.ae_title}@{arguments.host}"
    return _remove(arguments, "sources", key, "source")


# -- destinations -----------------------------------------------------------------------------------------


def _destinations_list(arguments: argparse.Namespace) -> int:
    destinations = _store(arguments).entries("destinations")
    if arguments.json:
        _print_json([d.model_dump(mode="json") for d in destinations])
        return 0
    for destination in destinations:
        print(f"{destination.name}: {destination.ae_title} at {destination.host}:{destination.port}")
    return 0


def _destinations_add(arguments: argparse.Namespace) -> int:
    store = _store(arguments)
    data: dict[str, Any] = {
        "name": arguments.name,
        "ae_title": arguments.ae_title,
        "host": arguments.host,
        "port": arguments.port,
    }
    if arguments.transfer_syntax:
        data["transfer_syntaxes"] = arguments.transfer_syntax
    if arguments.storage_commitment:
        data["storage_commitment"] = True
    store.create("destinations", data)
    return _saved(
        store,
        f"destination {arguments.name} added; test it with: medagent destinations echo {arguments.name}",
    )


def _destinations_remove(arguments: argparse.Namespace) -> int:
    return _remove(arguments, "destinations", arguments.name, "destination")


def _destinations_echo(arguments: argparse.Namespace) -> int:
    from dicom_node.admin.echo import echo_destination

    store = _store(arguments)
    result = echo_destination(store.settings, store.entry("destinations", arguments.name))
    if arguments.json:
        _print_json(result.to_dict())
    else:
        print(
            f"{result.destination} ({result.ae_title} at {result.host}:{result.port}): {result.message}"
            f" [{result.elapsed_ms:.0f} ms]"
        )
    return 0 if result.success else 1


# -- routes -----------------------------------------------------------------------------------------------


def _routes_list(arguments: argparse.Namespace) -> int:
    routes = _store(arguments).entries("routes")
    if arguments.json:
        _print_json([route.model_dump(mode="json") for route in routes])
        return 0
    for position, route in enumerate(routes):
        match = ", ".join(f"{k}={v}" for k, v in route.match.items()) or "every study"
        print(f"{position}. {route.name}: {match} -> {route.instruction!r} to {route.destinations}")
    return 0


def _routes_add(arguments: argparse.Namespace) -> int:
    match: dict[str, str] = {}
    for item in arguments.match or []:
        keyword, separator, pattern = item.partition("=")
        if not separator or not keyword:
            raise InvalidEntity([("match", f"'{item}' must be KEYWORD=PATTERN, e.g. Modality=CT")])
        match[keyword.strip()] = pattern
    data: dict[str, Any] = {
        "name": arguments.name,
        "match": match,
        "instruction": arguments.instruction,
        "destinations": arguments.destination or [],
    }
    if arguments.quiet_seconds is not None:
        data["completion"] = {"quiet_seconds": arguments.quiet_seconds}
    store = _store(arguments)
    store.create("routes", data, arguments.position)
    return _saved(store, f"route {arguments.name} added")


def _routes_remove(arguments: argparse.Namespace) -> int:
    return _remove(arguments, "routes", arguments.name, "route")


# -- jobs and questions -----------------------------------------------------------------------------------


def _index(settings: Any) -> Any:
    from dicom_node.index import index_location, open_index

    location = index_location(settings)
    if isinstance(location, Path) and not location.exists():
        raise EntityNotFound("index", f"{location} (is --config the running node's file?)")
    return open_index(settings)


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _jobs(arguments: argparse.Namespace) -> int:
    from config import load_settings
    from dicom_node.admin import views

    settings = load_settings(arguments.config)
    index = _index(settings)
    if arguments.job_id:
        detail = views.job_detail(settings, index, arguments.job_id)
        if arguments.json:
            _print_json(detail)
            return 0
        _print_job(detail)
        return 0
    rows = index.job_list(state=arguments.state, study_instance_uid=arguments.study, limit=arguments.limit)
    summaries = [views.job_summary(row) for row in rows]
    if arguments.json:
        _print_json(summaries)
        return 0
    print(f"{'job':24}  {'state':7}  {'created':19}  {'tools':28}  study")
    for job in summaries:
        tools = ",".join(job["tools"]) or "-"
        print(
            f"{job['job_id']:24}  {job['state']:7}  {_when(job['created_at']):19}  {tools[:28]:28}"
            f"  {job['study_instance_uid']}"
        )
    return 0


def _print_job(job: dict[str, Any]) -> None:
    print(f"job {job['job_id']}: {job['state']}" + (f" ({job['error']})" if job["error"] else ""))
    print(f"  study {job['study_instance_uid']} series {job['series_instance_uid']}")
    print(f"  instruction: {job['instruction']}")
    print(f"  thoughts: {job['plan']['thoughts']}")
    for action in job["actions"]:
        seconds = "" if action["seconds"] is None else f" in {action['seconds']:.1f} s"
        print(
            f"  action {action['index']} {action['API_name']} {json.dumps(action['API_params'])}:"
            f" {action['state']}{seconds}" + (f" - {action['error']}" if action["error"] else "")
        )
    for output in job["outputs"]:
        print(f"  output {output['kind']} {output['sop_instance_uid']}")
    for delivery in job["deliveries"]:
        print(
            f"  delivery of {delivery['kind']} {delivery['sop_instance_uid']} to {delivery['destination']}:"
            f" {delivery['state']} after {delivery['attempts']} tries"
            + (
                f" ({delivery['last_error']})"
                if delivery["last_error"] and delivery["state"] != "delivered"
                else ""
            )
        )
    if job["answer"]:
        print(f"  answer: {job['answer']['answer']}")


class _ProgressBar:
    """A tqdm bar over the steps of a question: planning, each action, answering (and encoding)."""

    def __init__(self, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=1, unit="step", disable=not enabled, file=sys.stderr, desc="planning", leave=False
        )

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.bar.total = total + 2
        self.bar.n = 0 if stage == "planning" else done + 1
        self.bar.set_description(stage)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.n = self.bar.total
        self.bar.refresh()
        self.bar.close()


def _ask(arguments: argparse.Namespace) -> int:
    from agent_core.registry import ToolRegistry
    from config import load_settings
    from dicom_node.admin.ask import ask_study

    settings = load_settings(arguments.config)
    index = _index(settings)
    progress = _ProgressBar(enabled=not arguments.no_progress)
    try:
        result = ask_study(
            settings,
            index,
            ToolRegistry.default(settings.models),
            arguments.study_instance_uid,
            arguments.question,
            series_instance_uid=arguments.series,
            send_sr=arguments.send_sr,
            destinations=arguments.destination,
            progress=progress,
        )
    finally:
        progress.close()
    if arguments.json:
        _print_json(result.to_dict())
        return 0
    print(f"plan: {result.plan['thoughts']}")
    for item in result.results:
        print(f"  {item['index']}. {item['tool']} ({item['engine']}): {item['status']}")
    print(result.answer + (f"\n(note: {result.note})" if result.note else ""))
    if result.outputs:
        print(f"{len(result.outputs)} object(s) queued for {result.destinations}; a running node sends them")
    print(f"job {result.job_id}")
    return 0


# -- parser -----------------------------------------------------------------------------------------------


def _command(
    commands: Any, name: str, help: str, handler: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, which takes ``--config`` and runs ``handler`` (errors as exit statuses)."""
    command = commands.add_parser(name, help=help)
    command.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"node configuration (default {DEFAULT_CONFIG})"
    )
    command.set_defaults(handler=_guarded(handler))
    return command


def _list_command(commands: Any, help: str, handler: Callable[[argparse.Namespace], int]) -> None:
    """Add a ``list`` subcommand with ``--json``."""
    _command(commands, "list", help, handler).add_argument("--json", action="store_true")


def add_admin_commands(commands: Any) -> None:
    """Add ``ae``, ``destinations``, ``routes``, ``jobs`` and ``ask`` to the ``medagent`` subparsers."""
    ae = commands.add_parser("ae", help="the node's AE title and the source AE titles allowed to send")
    ae_commands = ae.add_subparsers(dest="ae_command", required=True)
    _list_command(ae_commands, "the node's AE and the allowed source AE titles", _ae_list)
    for name, handler, verb in (("add", _ae_add, "allow"), ("remove", _ae_remove, "stop accepting")):
        command = _command(ae_commands, name, f"{verb} a calling AE title (a source)", handler)
        command.add_argument("ae_title", metavar="AE_TITLE")
        command.add_argument("--host", help="only from this address or host name")

    destinations = commands.add_parser("destinations", help="peers that receive the node's results")
    destination_commands = destinations.add_subparsers(dest="destinations_command", required=True)
    _list_command(destination_commands, "configured destinations", _destinations_list)
    add = _command(destination_commands, "add", "add a destination (C-STORE peer)", _destinations_add)
    add.add_argument("name", metavar="NAME")
    add.add_argument("--ae-title", required=True, help="the peer's AE title")
    add.add_argument("--host", required=True)
    add.add_argument("--port", required=True, type=int)
    add.add_argument(
        "--transfer-syntax", action="append", metavar="UID", help="an accepted transfer syntax (repeat)"
    )
    add.add_argument("--storage-commitment", action="store_true", help="ask the peer to commit (N-ACTION)")
    remove = _command(destination_commands, "remove", "remove a destination", _destinations_remove)
    remove.add_argument("name", metavar="NAME")
    echo = _command(
        destination_commands, "echo", "C-ECHO a destination (exit 1 if it fails)", _destinations_echo
    )
    echo.add_argument("name", metavar="NAME")
    echo.add_argument("--json", action="store_true")

    routes = commands.add_parser(
        "routes", help="routing rules: which studies get which instruction, sent where"
    )
    route_commands = routes.add_subparsers(dest="routes_command", required=True)
    _list_command(route_commands, "routes in the order they are tried", _routes_list)
    add = _command(route_commands, "add", "add a route", _routes_add)
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--match",
        action="append",
        metavar="KEYWORD=PATTERN",
        help="DICOM keyword and regex, e.g. Modality=CT (repeat)",
    )
    add.add_argument("--instruction", required=True, help='what to do, e.g. "Segment both lungs"')
    add.add_argument("--destination", action="append", metavar="NAME", help="send results there (repeat)")
    add.add_argument("--position", type=int, help="place in the list, 0 first (default: last)")
    add.add_argument(
        "--quiet-seconds", type=float, help="complete a study after this long without new instances"
    )
    remove = _command(route_commands, "remove", "remove a route", _routes_remove)
    remove.add_argument("name", metavar="NAME")

    jobs = _command(commands, "jobs", "jobs, newest first; with JOB_ID, one job in full", _jobs)
    jobs.add_argument("job_id", metavar="JOB_ID", nargs="?")
    jobs.add_argument("--state", choices=("queued", "running", "done", "failed"))
    jobs.add_argument("--study", metavar="STUDY_UID")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--json", action="store_true")

    ask = _command(commands, "ask", "ask the agent a question about a study and print the answer", _ask)
    ask.add_argument("study_instance_uid", metavar="STUDY_UID")
    ask.add_argument("question", metavar="QUESTION")
    ask.add_argument("--series", metavar="SERIES_UID", help="default: the study's largest image series")
    ask.add_argument(
        "--send-sr", action="store_true", help="also send the results and the answer (SR) to the PACS"
    )
    ask.add_argument(
        "--destination", action="append", metavar="NAME", help="for --send-sr (default: the route's)"
    )
    ask.add_argument("--json", action="store_true")
    ask.add_argument("--no-progress", action="store_true", help="no progress bar")
