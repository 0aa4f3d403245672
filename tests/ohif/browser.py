"""Python side of ``tests/ohif/driver.mjs``: OHIF's commands with their timings, and the events a viewer must
not produce; starting the driver and keeping its events is ``tests.helpers.browser_driver``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tests.helpers.browser_driver import BrowserDriver, BrowserError

logger = logging.getLogger(__name__)

DRIVER = Path(__file__).resolve().parent / "driver.mjs"


class OhifBrowser(BrowserDriver):
    """One headless chromium showing OHIF at ``viewer_url``, driven command by command.

    ``events`` collects what the page reported (console messages, page errors, failed requests, HTTP errors,
    requests off the viewer's origin), each with the command it happened during; ``timings`` holds
    (command, milliseconds).
    """

    driver_name = "OHIF"

    def __init__(self, viewer_url: str, artifacts: Path, width: int = 1600, height: int = 1000) -> None:
        super().__init__(DRIVER, artifacts, {"viewer": viewer_url, "width": width, "height": height})
        self.timings: list[tuple[str, int]] = []

    def command(self, cmd: str, **arguments: Any) -> dict[str, Any]:
        """Run one driver command; raises ``BrowserError`` when it fails (its events are kept)."""
        started = time.monotonic()
        answer = self._exchange(cmd, arguments)
        self.timings.append((cmd, int(answer.get("ms", (time.monotonic() - started) * 1000))))
        logger.info("OHIF %s: %s ms", cmd, answer.get("ms"))
        if not answer["ok"]:
            raise BrowserError(
                f"OHIF driver command {cmd!r} failed: {answer['error']}", cmd, answer.get("screenshot")
            )
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

    def _log_event(self, event: dict[str, Any]) -> None:
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
