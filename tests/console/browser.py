"""Python side of ``tests/console/driver.mjs``: page commands, and the events a working console must not
produce; starting the driver and keeping its events is ``tests.helpers.browser_driver``."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.helpers.browser_driver import BrowserDriver, BrowserError

logger = logging.getLogger(__name__)

DRIVER = Path(__file__).resolve().parent / "driver.mjs"


class ConsoleBrowser(BrowserDriver):
    """One headless chromium on the console at ``origin``; ``events`` holds what the page reported (console
    messages, page errors, failed requests, HTTP errors, requests off the origin), each with its command."""

    driver_name = "console"

    def __init__(self, origin: str, artifacts: Path) -> None:
        super().__init__(DRIVER, artifacts, {"origin": origin})
        self.screenshots: list[str] = []

    def _log_event(self, event: dict[str, Any]) -> None:
        level = (
            logging.WARNING if event["kind"] != "console" or event.get("type") == "error" else logging.INFO
        )
        logger.log(level, "browser %s during %s: %s", event["kind"], event["during"], event)

    def command(self, cmd: str, **arguments: Any) -> Any:
        """Run one driver command and return its result; ``BrowserError`` when it fails."""
        answer = self._exchange(cmd, arguments)
        if not answer["ok"]:
            if answer.get("screenshot"):
                self.screenshots.append(answer["screenshot"])
            raise BrowserError(
                f"console driver command {cmd!r} failed: {answer['error']} (screenshot: {answer.get('screenshot')})",
                cmd,
                answer.get("screenshot"),
            )
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
        super().close()
        (self.artifacts / "browser-events.json").write_text(json.dumps(self.events, indent=1))
