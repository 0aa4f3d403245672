"""Python side of ``driver.mjs``: start it, send commands, keep every browser event for the test log."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "driver.mjs"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")


class BrowserError(RuntimeError):
    """A driver command failed; ``screenshot`` is the page at that moment (or None)."""

    def __init__(self, command: str, error: str, screenshot: str | None) -> None:
        super().__init__(f"OHIF driver command {command!r} failed: {error}")
        self.command = command
        self.screenshot = screenshot


def chromium_binary() -> str:
    """Debian's real chromium binary (the /usr/bin/chromium wrapper script adds flags we set ourselves)."""
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("chromium is not installed (apt-get install chromium)")


def playwright_installed() -> bool:
    return (HERE / "node_modules" / "playwright-core" / "package.json").exists()


class OhifBrowser:
    """One headless chromium showing OHIF at ``viewer_url``, driven command by command.

    ``events`` collects what the page reported (console messages, page errors, failed requests, HTTP errors,
    requests off the viewer's origin), each with the command it happened during; ``timings`` holds
    (command, milliseconds).
    """

    def __init__(self, viewer_url: str, artifacts: Path, width: int = 1600, height: int = 1000) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("Node.js is not installed (it runs tests/ohif/driver.mjs)")
        if not playwright_installed():
            raise RuntimeError("playwright-core is missing: run 'npm ci' in tests/ohif (make setup does)")
        artifacts.mkdir(parents=True, exist_ok=True)
        self.artifacts = artifacts
        self.events: list[dict[str, Any]] = []
        self.timings: list[tuple[str, int]] = []
        options = {
            "viewer": viewer_url,
            "artifacts": str(artifacts),
            "chromium": chromium_binary(),
            "width": width,
            "height": height,
        }
        self._stderr_lines: list[str] = []
        self._process = subprocess.Popen(
            [node, str(DRIVER), json.dumps(options)],
            cwd=HERE,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr_lines.append(line.rstrip())
            logger.info("driver stderr: %s", line.rstrip())

    def command(self, cmd: str, **arguments: Any) -> dict[str, Any]:
        """Run one driver command; raises ``BrowserError`` when it fails (its events are kept)."""
        if self._process.poll() is not None:
            raise RuntimeError(f"the OHIF driver exited: {self._stderr_lines[-20:]}")
        assert self._process.stdin is not None and self._process.stdout is not None
        started = time.monotonic()
        self._process.stdin.write(json.dumps({"cmd": cmd, **arguments}) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(timeout=10)
            raise RuntimeError(f"the OHIF driver exited during {cmd!r}: {self._stderr_lines[-20:]}")
        answer = json.loads(line)
        for event in answer.get("events", []):
            event["during"] = cmd
            self.events.append(event)
            _log_event(event)
        self.timings.append((cmd, int(answer.get("ms", (time.monotonic() - started) * 1000))))
        logger.info("OHIF %s: %s ms", cmd, answer.get("ms"))
        if not answer["ok"]:
            raise BrowserError(cmd, answer["error"], answer.get("screenshot"))
        return answer["result"]

    def errors(self) -> list[dict[str, Any]]:
        """Events a viewer must not produce: console errors, page errors, crashes, failed or refused
        requests, HTTP errors, and any request that left the viewer's origin."""
        return [
            event
            for event in self.events
            if (event["kind"] == "console" and event.get("type") == "error")
            or event["kind"] in ("pageerror", "crash", "requestfailed", "http", "external")
        ]

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.command("close")
            except (RuntimeError, OSError, ValueError):
                pass
            if self._process.stdin is not None:
                self._process.stdin.close()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> OhifBrowser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _log_event(event: dict[str, Any]) -> None:
    kind = event["kind"]
    if kind == "console":
        level = logging.WARNING if event.get("type") in ("error", "warning") else logging.INFO
        logger.log(
            level,
            "browser console.%s [%ss, %s]: %s",
            event.get("type"),
            event["t"],
            event["during"],
            event["text"],
        )
    else:
        logger.warning(
            "browser %s [%ss, %s]: %s",
            kind,
            event["t"],
            event["during"],
            {k: v for k, v in event.items() if k not in ("kind", "t", "during")},
        )
