"""Python side of ``tests/console/driver.mjs``: start it, send page commands, keep every browser event."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.ohif.browser import chromium_binary

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "driver.mjs"


class BrowserError(RuntimeError):
    """A driver command failed; ``screenshot`` is the page at that moment (or None)."""

    def __init__(self, command: str, error: str, screenshot: str | None) -> None:
        super().__init__(f"console driver command {command!r} failed: {error} (screenshot: {screenshot})")
        self.command = command
        self.screenshot = screenshot


def playwright_installed() -> bool:
    return (HERE / "node_modules" / "playwright-core" / "package.json").exists()


class ConsoleBrowser:
    """One headless chromium on the console at ``origin``; ``events`` holds what the page reported (console
    messages, page errors, failed requests, HTTP errors, requests off the origin), each with its command."""

    def __init__(self, origin: str, artifacts: Path) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("Node.js is not installed (it runs tests/console/driver.mjs)")
        if not playwright_installed():
            raise RuntimeError("playwright-core is missing: run 'npm ci' in tests/console (make setup does)")
        artifacts.mkdir(parents=True, exist_ok=True)
        self.artifacts = artifacts
        self.events: list[dict[str, Any]] = []
        self.screenshots: list[str] = []
        options = {"origin": origin, "artifacts": str(artifacts), "chromium": chromium_binary()}
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
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr_lines.append(line.rstrip())
            logger.info("driver stderr: %s", line.rstrip())

    def command(self, cmd: str, **arguments: Any) -> Any:
        """Run one driver command and return its result; ``BrowserError`` when it fails."""
        if self._process.poll() is not None:
            raise RuntimeError(f"the console driver exited: {self._stderr_lines[-20:]}")
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps({"cmd": cmd, **arguments}) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(timeout=10)
            raise RuntimeError(f"the console driver exited during {cmd!r}: {self._stderr_lines[-20:]}")
        answer = json.loads(line)
        for event in answer.get("events", []):
            event["during"] = cmd
            self.events.append(event)
            level = (
                logging.WARNING
                if event["kind"] != "console" or event.get("type") == "error"
                else logging.INFO
            )
            logger.log(level, "browser %s during %s: %s", event["kind"], cmd, event)
        if not answer["ok"]:
            if answer.get("screenshot"):
                self.screenshots.append(answer["screenshot"])
            raise BrowserError(cmd, answer["error"], answer.get("screenshot"))
        return answer.get("result")  # JSON has no undefined: a command that returns nothing has no key

    # -- the commands -------------------------------------------------------------------------------------

    def goto(self, url: str) -> None:
        self.command("goto", url=url)

    def fill(self, selector: str, value: object) -> None:
        self.command("fill", selector=selector, value=value)

    def click(self, selector: str) -> None:
        self.command("click", selector=selector)

    def check(self, selector: str, checked: bool = True) -> None:
        self.command("check", selector=selector, checked=checked)

    def wait(self, selector: str, timeout: float = 30, state: str = "visible") -> None:
        self.command("wait", selector=selector, timeout=int(timeout * 1000), state=state)

    def wait_for(self, expression: str, arg: Any = None, timeout: float = 30, polling: int = 500) -> Any:
        """Poll the function source ``expression`` (called with ``arg``) in the page until it is truthy."""
        return self.command(
            "waitFor", expression=expression, arg=arg, timeout=int(timeout * 1000), polling=polling
        )

    def text(self, selector: str) -> str:
        return str(self.command("text", selector=selector))

    def evaluate(self, expression: str, arg: Any = None) -> Any:
        return self.command("evaluate", expression=expression, arg=arg)

    def canvas_pixels(self, selector: str) -> np.ndarray:
        """What the canvas shows, ``uint8 [row, column, RGBA]``."""
        data_url = self.command("canvas", selector=selector)
        encoded = data_url.split(",", 1)[1]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGBA"))

    def screenshot(self, name: str) -> Path:
        path = Path(self.command("screenshot", name=name)["screenshot"])
        self.screenshots.append(str(path))
        logger.info("screenshot: %s", path)
        print(f"screenshot: {path}")
        return path

    def errors(self, expected: tuple[int, ...] = (), since: int = 0) -> list[dict[str, Any]]:
        """Events a working console must not produce: page errors, crashes, failed requests, requests off
        the origin, console errors and HTTP errors, except HTTP answers with a status in ``expected`` (the
        401 of a wrong token, the 422 of a refused value) and the console line chromium logs for each;
        from event number ``since`` on."""
        found = []
        for event in self.events[since:]:
            if event["kind"] in ("pageerror", "crash", "requestfailed", "external"):
                found.append(event)
            elif event["kind"] == "http" and event["status"] not in expected:
                found.append(event)
            elif event["kind"] == "console" and event.get("type") == "error":
                if not any(f"status of {status} " in event["text"] for status in expected):
                    found.append(event)
        return found

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
        (self.artifacts / "browser-events.json").write_text(json.dumps(self.events, indent=1))

    def __enter__(self) -> ConsoleBrowser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
