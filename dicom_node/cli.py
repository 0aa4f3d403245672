"""The ``medagent`` command: ``serve`` runs the node, ``worker`` runs a Celery worker, ``check`` validates a config."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from config import ConfigError, load_settings

DEFAULT_CONFIG = Path("config/node.example.yaml")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _serve(arguments: argparse.Namespace) -> int:
    from dicom_node.allocator import keep_freed_memory
    from dicom_node.node import Node

    keep_freed_memory()
    settings = load_settings(arguments.config)
    node = Node(settings, config_file=arguments.config)

    def stop(signum: int, frame: object) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        node._stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    node.start()
    logging.getLogger(__name__).info(
        "MedAgent node %s ready on %s:%d, storage %s",
        settings.node.ae_title,
        settings.node.bind,
        node.scp.port,
        node.storage,
    )
    node.wait()
    node.stop()
    return 0


def _worker(arguments: argparse.Namespace) -> int:
    """Run a Celery worker for a node in redis queue mode, with the node's configuration file.

    The worker takes tasks from the queues named (``cpu``, ``gpu`` or both) on ``queue.broker_url`` and reads
    and writes the node's storage and index, which it must see at the same paths as the node. Each of its
    ``--concurrency`` processes runs one task at a time and, with ``queue.preload_models``, loads the
    weights of its queues' tools when it starts.
    """
    import os

    from config.settings import QueueMode

    settings = load_settings(arguments.config)
    if settings.queue.mode is not QueueMode.REDIS:
        print(
            f"medagent: {arguments.config}: queue.mode is '{settings.queue.mode.value}'; `medagent worker`"
            " serves a node configured with queue: {mode: redis, broker_url: redis://HOST:PORT/DB}"
            " (an embedded node runs its own worker)",
            file=sys.stderr,
        )
        return 2
    queues = [name.strip() for name in arguments.queues.split(",") if name.strip()]
    if not queues or any(name not in ("cpu", "gpu") for name in queues):
        print(f"medagent: --queues '{arguments.queues}' must name cpu, gpu or both", file=sys.stderr)
        return 2
    if arguments.concurrency < 1:
        print(f"medagent: --concurrency {arguments.concurrency} must be 1 or more", file=sys.stderr)
        return 2
    os.environ["MEDAGENT_CONFIG"] = str(Path(arguments.config).resolve())
    from workers.app import app

    if settings.queue.preload_models:
        app.conf.medagent_preload_queues = tuple(queues)
    code = app.start(
        [
            "worker",
            "--queues",
            ",".join(queues),
            "--concurrency",
            str(arguments.concurrency),
            "--pool",
            "prefork",
            "--hostname",
            arguments.hostname or f"medagent-{os.getpid()}@%h",
            "--loglevel",
            arguments.log_level,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return int(code or 0)


def _check(arguments: argparse.Namespace) -> int:
    settings = load_settings(arguments.config)
    print(
        f"{arguments.config}: valid - AE {settings.node.ae_title} on {settings.node.bind}:{settings.node.port}, "
        f"{len(settings.sources)} source(s), {len(settings.destinations)} destination(s), {len(settings.routes)} route(s)"
    )
    return 0


def _resubmit(arguments: argparse.Namespace) -> int:
    from dicom_node.index import open_index

    settings = load_settings(arguments.config)
    if arguments.destination is not None:
        try:
            settings.destination(arguments.destination)
        except KeyError:
            print(f"medagent: destination '{arguments.destination}' is not configured", file=sys.stderr)
            return 2
    index = open_index(settings)
    states = ("dead", "delivered") if arguments.include_delivered else ("dead",)
    count = index.resubmit_deliveries(
        sop_instance_uid=arguments.sop_instance_uid, destination=arguments.destination, states=states
    )
    print(f"{count} deliver{'y' if count == 1 else 'ies'} queued again; a running node sends them now")
    return 0


def _process_now(arguments: argparse.Namespace) -> int:
    from dicom_node.index import Index, index_location

    settings = load_settings(arguments.config)
    location = index_location(settings)
    if isinstance(location, Path) and not location.exists():
        print(f"medagent: no index at {location}; is --config the running node's file?", file=sys.stderr)
        return 1
    index = Index(location)
    if not index.request_processing(arguments.study_instance_uid):
        print(
            f"medagent: study {arguments.study_instance_uid} is not in the index at {index.location}",
            file=sys.stderr,
        )
        return 1
    print(f"study {arguments.study_instance_uid}: process now requested; the node plans it at its next sweep")
    return 0


def _models(arguments: argparse.Namespace) -> int:
    """Every tool, its engines, whether each can run here and why (or why not)."""
    from agent_core.registry import ToolRegistry

    settings = load_settings(arguments.config)
    registry = ToolRegistry.default(settings.models)
    rows = []
    for tool in registry.tools():
        for engine in tool.engines():
            rows.append(
                {
                    "tool": tool.card.name,
                    "queue": tool.card.queue.value,
                    "engine": engine.name,
                    "kind": engine.kind.value,
                    "ready": engine.ready,
                    "reason": engine.reason,
                }
            )
    broken = [{"entry_point": name, "error": why} for name, why in registry.broken.items()]
    if arguments.json:
        print(json.dumps({"engines": rows, "broken": broken}, indent=1))
        return 0
    width = max((len(row["tool"]) for row in rows), default=4)
    engine_width = max((len(row["engine"]) for row in rows), default=6)
    print(f"{'tool':{width}}  {'queue':5}  {'engine':{engine_width}}  {'kind':10}  ready  why")
    for row in rows:
        print(
            f"{row['tool']:{width}}  {row['queue']:5}  {row['engine']:{engine_width}}  {row['kind']:10}"
            f"  {'yes' if row['ready'] else 'no ':5}  {row['reason']}"
        )
    for item in broken:
        print(f"third-party tool {item['entry_point']} does not load: {item['error']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medagent", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the node: SCP, tracker, outbox and embedded worker")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    serve.set_defaults(handler=_serve)
    worker = commands.add_parser("worker", help="run a Celery worker for a node in redis queue mode")
    worker.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    worker.add_argument("--queues", default="cpu,gpu", help="cpu, gpu or cpu,gpu (default cpu,gpu)")
    worker.add_argument("--concurrency", type=int, default=1, help="worker processes (default 1)")
    worker.add_argument("--hostname", help="Celery node name (default medagent-PID@HOST)")
    worker.set_defaults(handler=_worker)
    resubmit = commands.add_parser("resubmit", help="queue dead-letter deliveries again")
    resubmit.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    resubmit.add_argument("--sop-instance-uid", help="only this object")
    resubmit.add_argument("--destination", help="only this destination")
    resubmit.add_argument("--include-delivered", action="store_true", help="send delivered objects again too")
    resubmit.set_defaults(handler=_resubmit)
    check = commands.add_parser("check", help="validate a configuration file and exit")
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    check.set_defaults(handler=_check)
    models = commands.add_parser("models", help="list tools and engines, whether each can run here and why")
    models.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_models)
    from agent_core.planner.commands import add_planner_commands

    add_planner_commands(commands, default_config=DEFAULT_CONFIG)
    process_now = commands.add_parser(
        "process-now", help="ask the running node to complete a study now and plan it (no waiting)"
    )
    process_now.add_argument("study_instance_uid", metavar="STUDY_UID")
    process_now.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    process_now.set_defaults(handler=_process_now)
    from dicom_node.admin.commands import add_admin_commands

    add_admin_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    _configure_logging(arguments.log_level)
    try:
        return arguments.handler(arguments)
    except ConfigError as exc:
        print(f"medagent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
