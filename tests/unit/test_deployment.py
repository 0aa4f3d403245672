"""The Dockerfile and the compose files: commands, options and configuration keys that the code accepts.

No image is built here (that needs a registry); what the files name is checked against the real command
line parser, the real settings validation (``medagent check`` on the mounted file with the compose
environment) and the repository's files, and the image's health check command is run against a real socket.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from config import load_settings
from config.settings import QueueMode
from dicom_node.cli import build_parser
from workers.app import QUEUES

ROOT = Path(__file__).resolve().parents[2]
MOUNTED_CONFIG = "/etc/medagent/node.yaml"


def _compose(*names: str) -> dict[str, Any]:
    """The compose files merged as ``docker compose -f A -f B`` merges services' mappings."""
    merged: dict[str, Any] = {}
    for name in names:
        document = yaml.safe_load((ROOT / name).read_text())
        for key, value in document.items():
            if key == "services":
                services = merged.setdefault("services", {})
                for service, definition in value.items():
                    current = services.setdefault(service, {})
                    for field, setting in definition.items():
                        if isinstance(setting, dict) and isinstance(current.get(field), dict):
                            current[field] = {**current[field], **setting}
                        else:
                            current[field] = setting
            elif isinstance(value, dict):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged


def _interpolate(text: str) -> str:
    """Compose's ``${NAME:-default}`` with no variable set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def _mounted_config(service: dict[str, Any]) -> Path:
    for volume in service["volumes"]:
        source, target, *_ = _interpolate(volume).split(":")
        if target == MOUNTED_CONFIG:
            return ROOT / source
    raise AssertionError(f"no volume mounts {MOUNTED_CONFIG}: {service['volumes']}")


def _parse_command(command: list[str]):
    assert command[0] == "medagent", command
    try:
        return build_parser().parse_args(command[1:])
    except SystemExit as exc:  # argparse exits on an unknown command or option
        raise AssertionError(f"`{shlex.join(command)}` is not a valid medagent command line") from exc


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in service.get("environment", {}).items()}


@pytest.mark.parametrize(
    "files",
    [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.postgres.yml")],
    ids=["sqlite", "postgresql"],
)
def test_compose_services_run_valid_commands_on_a_valid_configuration(files: tuple[str, ...]) -> None:
    compose = _compose(*files)
    services = compose["services"]
    assert {"redis", "node", "worker"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on undefined service {dependency}"

    node = _parse_command(services["node"]["command"])
    worker = _parse_command(services["worker"]["command"])
    assert node.handler.__name__ == "_serve" and str(node.config) == MOUNTED_CONFIG
    assert worker.handler.__name__ == "_worker" and str(worker.config) == MOUNTED_CONFIG
    assert set(worker.queues.split(",")) == set(QUEUES) and worker.concurrency == 1

    storages = set()
    for name in ("node", "worker"):
        service = services[name]
        config = _mounted_config(service)
        settings = load_settings(config, environ=_environment(service))  # ConfigError names a bad key
        assert settings.queue.mode is QueueMode.REDIS
        assert urlsplit(settings.queue.broker_url).hostname in services
        assert (settings.index.url is not None) == ("docker-compose.postgres.yml" in files)
        if settings.index.url is not None:
            assert urlsplit(settings.index.url).hostname in services
        volume = next(v for v in service["volumes"] if v.split(":")[1] == str(settings.node.storage))
        assert volume.split(":")[0] in compose["volumes"], (
            "the storage must be a named volume the services share"
        )
        storages.add((volume.split(":")[0], str(settings.node.storage), settings.index.url))
        checked = subprocess.run(
            [sys.executable, "-m", "dicom_node.cli", "check", "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**_environment(service), "PATH": "/usr/bin:/bin"},
            timeout=120,
        )
        assert checked.returncode == 0, checked.stderr
    assert len(storages) == 1, f"node and worker must see the same storage and index: {storages}"
    assert services["worker"]["healthcheck"] == {"disable": True}


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of ``(INSTRUCTION, arguments)`` with continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_dockerfile_is_multi_stage_runs_as_a_user_and_copies_what_exists() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2 and " AS " in stages[0][0][1].upper()
    runtime = dict(stages[-1])
    assert "COPY" in runtime and not any(
        name == "RUN" and "build-essential" in args for name, args in stages[-1]
    )
    users = [args for name, args in stages[-1] if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in stages:
        for name, args in stage:
            if name == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                    assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), (
                        f"{source} is in .dockerignore"
                    )
    cmd = yaml.safe_load(runtime["CMD"])  # a JSON array is YAML too
    arguments = _parse_command(cmd)
    assert arguments.handler.__name__ == "_serve"


def _healthcheck_command() -> list[str]:
    [healthcheck] = [args for name, args in _dockerfile_stages()[-1] if name == "HEALTHCHECK"]
    assert "--start-period" in healthcheck
    return yaml.safe_load(healthcheck.partition(" CMD ")[2])


def test_health_check_passes_while_the_scp_port_accepts_and_fails_when_it_does_not(tmp_path: Path) -> None:
    command = _healthcheck_command()
    assert command[0] == "python"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        (tmp_path / "effective-config.yaml").write_text(
            yaml.safe_dump({"node": {"bind": "0.0.0.0", "port": port}})
        )
        environment = {"MEDAGENT__NODE__STORAGE": str(tmp_path), "PATH": "/usr/bin:/bin"}
        healthy = subprocess.run(
            [sys.executable, *command[1:]], env=environment, capture_output=True, timeout=30
        )
        assert healthy.returncode == 0, healthy.stderr
    # the port is closed now: the check must fail
    unhealthy = subprocess.run(
        [sys.executable, *command[1:]], env=environment, capture_output=True, timeout=30
    )
    assert unhealthy.returncode != 0
