"""The allocator tuning the command line applies: short-lived 256 KiB buffers (socket
reads) must not move the program break back and forth."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ytun._alloc import tune_allocator

PROBE = textwrap.dedent(
    """
    import ctypes, os, sys
    sys.path.insert(0, os.getcwd())
    from ytun._alloc import tune_allocator
    libc = ctypes.CDLL(None)
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = (ctypes.c_ssize_t,)
    if sys.argv[1] == "tuned":
        assert tune_allocator()
    before = libc.sbrk(0)
    block = bytes(1024 * 1024)  # a few socket reads' worth
    held = libc.sbrk(0)
    del block
    print(held - before, libc.sbrk(0) - before)
    """
)


def heap_growth(mode: str) -> tuple[int, int]:
    """How far the program break moved for a 1 MiB block, while held and once freed."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True
    )
    held, freed = out.stdout.split()
    return int(held), int(freed)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_keeps_the_heap_for_bulk_buffers():
    held, freed = heap_growth("tuned")
    # Served from the heap, and kept there for the next read once freed.
    assert held >= 512 * 1024  # the part not already free in the heap
    assert freed == held
    # Untuned, glibc maps such a block on its own and unmaps it again: every fresh page
    # faulted in and zeroed on the next read.
    assert heap_growth("default") == (0, 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuning_twice_is_harmless():
    assert tune_allocator() is True
    assert tune_allocator() is True
