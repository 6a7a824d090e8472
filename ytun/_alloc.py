"""The C allocator tuned for a process that moves bulk data (the command line's server
and client).

Every socket read of up to 256 KiB becomes a ``bytes`` object that lives for a moment.
glibc serves such blocks from the heap once its dynamic mmap threshold has risen past
them, then gives the memory back to the kernel (``brk``) whenever the top of the heap is
free, and takes it again on the next read: thousands of ``brk`` calls per second, each new
page faulted in and zeroed. Measured on a 100 MiB download through the tunnel, that was
about half of the server's and the client's CPU time. A fixed mmap threshold above the
largest read and a trim threshold of a few reads keep those pages in the process instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks at least this large get their own mapping (well above one 256 KiB read).
MMAP_THRESHOLD = 4 * 1024 * 1024
#: Free memory at the top of the heap kept for the next reads before it is returned.
TRIM_THRESHOLD = 32 * 1024 * 1024


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds (see the module's doc); False where the C
    library is not glibc (nothing is changed there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success; setting either turns glibc's dynamic threshold off.
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
