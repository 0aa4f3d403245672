"""The allocator keeps freed instance-sized buffers in the process (dicom_node.allocator)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# receives 200 instances of 0.65 MB as the acceptor does (5 PDUs of 128 KiB gathered into a BytesIO, then
# a copy of the data set) and prints the page faults they cost
_FAULTS = """
import io, resource, sys
if sys.argv[1] == "keep":
    from dicom_node.allocator import keep_freed_memory
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    stream = io.BytesIO()
    for _ in range(5):
        pdu = bytearray(131_072)
        stream.write(memoryview(pdu)[6:])
        del pdu
    data = stream.getbuffer()
    copy = bytes(data)
    data.release()
    del stream, copy
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    completed = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return int(completed.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_instance_sized_buffers_are_reused_without_page_faults() -> None:
    default, kept = _faults("default"), _faults("keep")
    # with glibc's defaults the buffers are mapped afresh for every instance: about 320 faults each here
    assert default > 200 * 150
    # kept: the first instance's buffers fault their pages in once, the others reuse them
    assert kept < 2_000
