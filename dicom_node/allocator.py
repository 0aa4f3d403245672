"""glibc's allocator told to keep freed memory for the next instance instead of returning it to the kernel.

Every received instance passes through a few buffers of about its own size (each 128 KiB PDU, the data
set gathered from them). glibc serves a request above its mmap threshold (128 KiB to start with) with
fresh pages from the kernel and returns them when the buffer is freed, and gives back free memory at the
top of its heap past its trim threshold: so each instance faults its buffers in page by page again, about
320 faults for a 0.65 MB CT slice (``tests/unit/dicom_node/test_allocator.py`` counts them), 0.7 ms on this
project's virtual machines, where a fault costs about 2 µs. Raising both thresholds, as mallopt(3) allows,
keeps buffers up to ``MMAP_THRESHOLD`` in the heap and up to ``TRIM_THRESHOLD`` of free heap in the process.

Only glibc has ``mallopt``; elsewhere (musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: the largest value glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): buffers of larger instances are mapped
MMAP_THRESHOLD = 32 * 1024 * 1024
#: free memory the heap keeps: a few large instances' worth on each association at once
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where there is no ``mallopt``."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    done = bool(mapped) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not done:
        logger.debug("mallopt refused the thresholds; the allocator keeps its defaults")
    return done
