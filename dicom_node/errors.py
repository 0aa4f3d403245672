"""The node's exception tree.

NodeError
├── SpoolError            an instance could not be made durable (the SCP answers 0xA700)
├── InstanceRejected      a received data set is refused (carries the DIMSE status the SCP answers)
├── LoadError             a series cannot be turned into a volume (reason in the message)
├── EncodeError           a result cannot be encoded as a valid DICOM object
└── DeliveryFailed        a C-STORE to a destination did not succeed (carries what a retry needs)
"""

from __future__ import annotations


class NodeError(Exception):
    """Root of every error the node raises on purpose."""


class SpoolError(NodeError):
    """An instance could not be written durably to the spool."""


class InstanceRejected(NodeError):
    """A received data set is refused: ``status`` is the C-STORE status to answer, ``reason`` says why.

    ``quarantine`` tells whether the received bytes are kept in ``quarantine/`` (undecodable or
    non-conformant data) or only the reason is recorded (a refusal by policy: SOP class, size).
    """

    def __init__(self, status: int, reason: str, *, quarantine: bool = True) -> None:
        self.status = status
        self.reason = reason
        self.quarantine = quarantine
        super().__init__(f"{reason} (status 0x{status:04X})")


class LoadError(NodeError):
    """A series cannot be loaded into a volume."""


class EncodeError(NodeError):
    """A tool result cannot be encoded as DICOM."""


class DeliveryFailed(NodeError):
    """A C-STORE of ``sop_instance_uid`` to ``destination`` failed.

    ``status`` is the DIMSE status when the peer answered, ``None`` when no association could be made.
    ``transient`` tells whether a retry can help (0xA7xx and connection errors) or not (0xA9xx, 0xCxxx).
    """

    def __init__(self, destination: str, sop_instance_uid: str, status: int | None, reason: str) -> None:
        self.destination = destination
        self.sop_instance_uid = sop_instance_uid
        self.status = status
        self.reason = reason
        super().__init__(
            f"C-STORE of {sop_instance_uid} to '{destination}' failed: {reason}"
            + (f" (status 0x{status:04X})" if status is not None else "")
        )

    @property
    def transient(self) -> bool:
        if self.status is None:
            return True
        return (self.status & 0xFF00) == 0xA700 or self.status == 0x0001 or self.status == 0xFFFF
