"""Python side of the browser drivers (``tests/console/driver.mjs``, ``tests/ohif/driver.mjs``): start one in
Node.js, exchange a JSON command line for a JSON answer line, keep the page's events, close it.

The protocol is in ``tests/helpers/browser_driver.mjs``. What a command returns, how an event is logged and
which events count as errors is each browser's own (``tests/console/browser.py``, ``tests/ohif/browser.py``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Self

logger = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[2]
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")


class BrowserError(RuntimeError):
    """A driver command failed; ``screenshot`` is the page at that moment (or None)."""

    def __init__(self, message: str, command: str, screenshot: str | None) -> None:
        super().__init__(message)
        self.command = command
        self.screenshot = screenshot


def chromium_binary() -> str:
    """Debian's real chromium binary (the /usr/bin/chromium wrapper script adds flags we set ourselves)."""
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("chromium is not installed (apt-get install chromium)")


def playwright_installed(driver_folder: Path) -> bool:
    """Whether ``npm ci`` has installed playwright-core next to a driver."""
    return (driver_folder / "node_modules" / "playwright-core" / "package.json").exists()


class BrowserDriver:
    """One ``node driver.mjs '<options>'`` process, started in the driver's folder, with one headless chromium.

    ``options`` are the driver's own; ``artifacts`` (where screenshots go) and ``chromium`` are added.
    ``events`` collects what the page reported, each with the command it happened during (``"during"``).
    Subclasses name the driver in ``driver_name`` ("console", "OHIF"), log events in ``_log_event`` and turn
    answers into results in ``command``, with ``_exchange``.
    """

    driver_name: str

    def __init__(self, driver: Path, artifacts: Path, options: dict[str, Any]) -> None:
        folder = driver.parent
        node = shutil.which("node")
        if node is None:
            raise RuntimeError(f"Node.js is not installed (it runs {driver.relative_to(REPOSITORY)})")
        if not playwright_installed(folder):
            raise RuntimeError(
                f"playwright-core is missing: run 'npm ci' in {folder.relative_to(REPOSITORY)} (make setup does)"
            )
        artifacts.mkdir(parents=True, exist_ok=True)
        self.artifacts = artifacts
        self.events: list[dict[str, Any]] = []
        options = {**options, "artifacts": str(artifacts), "chromium": chromium_binary()}
        self._stderr_lines: list[str] = []
        self._process = subprocess.Popen(
            [node, str(driver), json.dumps(options)],
            cwd=folder,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr_lines.append(line.rstrip())
            logger.info("%s driver stderr: %s", self.driver_name, line.rstrip())

    def _exchange(self, cmd: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Send one command and return the driver's answer, ok or not, after keeping and logging its events;
        ``RuntimeError`` when the driver has exited."""
        if self._process.poll() is not None:
            raise RuntimeError(f"the {self.driver_name} driver exited: {self._stderr_lines[-20:]}")
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps({"cmd": cmd, **arguments}) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(timeout=10)
            raise RuntimeError(
                f"the {self.driver_name} driver exited during {cmd!r}: {self._stderr_lines[-20:]}"
            )
        answer: dict[str, Any] = json.loads(line)
        for event in answer.get("events", []):
            event["during"] = cmd
            self.events.append(event)
            self._log_event(event)
        return answer

    def _log_event(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def command(self, cmd: str, **arguments: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Send "close" and wait for the driver to end (killed after 20 s)."""
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
