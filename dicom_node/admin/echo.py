"""C-ECHO a configured destination: what an admin runs after adding a peer, and why it failed if it did."""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification

from config import Destination, Settings

__all__ = ["EchoResult", "echo_destination"]


@dataclass(frozen=True)
class EchoResult:
    """The outcome of one C-ECHO: ``success``, the DIMSE ``status`` when the peer answered, a ``message``
    a person can act on, and the round trip in milliseconds (association included)."""

    destination: str
    ae_title: str
    host: str
    port: int
    success: bool
    status: int | None
    message: str
    elapsed_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection opens, else why not (connection refused, time-out, unknown host)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as exc:
        return f"host '{host}' does not resolve ({exc.strerror})"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g} s (firewall, or wrong host)"
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc} (is the peer running on that port?)"


def echo_destination(
    settings: Settings, destination: Destination, timeout: float | None = None
) -> EchoResult:
    """Open an association from the node's AE title to ``destination``, send C-ECHO, release it.

    ``timeout`` (seconds, default ``delivery.timeout_seconds`` capped at 10) bounds the connection, the
    association and the answer. Never raises for a peer that is down or refuses: the result says why.
    """
    timeout = min(settings.delivery.timeout_seconds, 10.0) if timeout is None else timeout
    started = time.monotonic()

    def result(success: bool, status: int | None, message: str) -> EchoResult:
        return EchoResult(
            destination=destination.name,
            ae_title=destination.ae_title,
            host=destination.host,
            port=destination.port,
            success=success,
            status=status,
            message=message,
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
        )

    unreachable = _reachable(destination.host, destination.port, timeout)
    if unreachable is not None:
        return result(False, None, unreachable)
    ae = AE(ae_title=settings.node.ae_title)
    for name in ("connection_timeout", "acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(ae, name, timeout)
    ae.add_requested_context(Verification)
    received: list[A_ASSOCIATE] = []

    def keep_answer(event: evt.Event) -> None:
        primitive = event.primitive  # type: ignore[attr-defined]
        if isinstance(primitive, A_ASSOCIATE):
            received.append(primitive)

    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_ACSE_RECV, keep_answer)],
    )
    if assoc.is_rejected:
        why = ""
        if received and received[-1].result is not None:
            answer = received[-1]
            why = f": {answer.result_str}, {answer.source_str}, {answer.reason_str}"
        return result(
            False,
            None,
            f"association rejected by {destination.host}:{destination.port}{why}"
            f" (does the peer know calling AE '{settings.node.ae_title}' and called AE"
            f" '{destination.ae_title}'?)",
        )
    if not assoc.is_established:
        return result(False, None, "the association was aborted or timed out (is it a DICOM port?)")
    try:
        answer = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    status = int(answer.Status) if answer is not None and "Status" in answer else None
    if status is None:
        return result(False, None, "no C-ECHO response (connection lost or time-out)")
    if status != 0x0000:
        return result(False, status, f"C-ECHO answered with status 0x{status:04X}")
    return result(True, status, "C-ECHO succeeded")
