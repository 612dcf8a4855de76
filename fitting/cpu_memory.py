"""Keep freed CPU memory in the process: the batched fit's large temporaries reuse it.

What it fixes (issue 14)
------------------------
A batched fit on the CPU allocates and frees the same large tensors at every iteration: the
soft rasterizer's face-pixel pairs (about 540,000 pairs at batch 16 and 96 px, rows of 2-43 MB),
the search's blocks, their gradients. glibc's ``malloc`` serves a block above its mmap threshold
(128 KiB at start, raised up to 32 MiB as such blocks are freed) with a fresh ``mmap`` and gives
it back with ``munmap`` when it is freed, and it returns the top of the heap to the system
above its trim threshold. Either way the next iteration's tensor lands on new pages and pays
one page fault per 4 KiB page on first touch, in the kernel: a (20, 51136) -> (20, 540000)
``index_select`` took 37 ms, of which 30 ms were page faults (7 ms with the memory kept), an
elementwise product of two (3, 540000) rows 2.3 ms (0.8 ms). Batch 1's tensors are small enough
to be reused from the heap, so the faults fell on the batch sizes that batching should speed
up (``bench/throughput.py --malloc default`` measures without this; README, "Whole datasets").

What :func:`keep_freed_memory` does
-----------------------------------
``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` (glibc's largest; blocks below it come from the heap),
``mallopt(M_TRIM_THRESHOLD, 2 GiB)`` (the heap's free top is kept up to 2 GiB) and ``mallopt(M_TOP_PAD,
64 MiB)`` (the heap grows in steps of 64 MiB), through ``ctypes``: the process keeps the memory
its largest iteration needed instead of handing it back and faulting it in again, so its
resident size stays at its peak (which a fit reaches at every iteration anyway). The settings
are process-wide and stay for the process's life. Results are unchanged (only where the
memory comes from changes). :class:`~fitting.Fitter` calls it when it fits on the CPU; the
environment variable ``HANDFIT_CPU_MALLOC=default`` leaves glibc's defaults alone. Other C
libraries (musl, macOS, Windows) are left alone too.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD"]

#: glibc's ``mallopt`` parameter numbers (``<malloc.h>``)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: bytes: blocks below this come from the heap (glibc's maximum, HEAP_MAX_SIZE / 2 on 64 bits)
MMAP_THRESHOLD = 32 << 20
#: bytes of free memory at the heap's top before it is given back (``mallopt`` takes an int)
TRIM_THRESHOLD = 2 ** 31 - 1
#: bytes the heap grows by beyond each request
TOP_PAD = 64 << 20

_state: dict = {}


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (see the module docstring).

    Idempotent: the first call sets the three ``mallopt`` parameters, later calls return
    its outcome.

    Returns:
        True if the settings are in effect; False where the C library is not glibc, where
        ``HANDFIT_CPU_MALLOC=default`` is set, or where ``mallopt`` refused a value.
    """
    if "on" not in _state:
        _state["on"] = _apply()
    return _state["on"]


def _apply() -> bool:
    if os.environ.get("HANDFIT_CPU_MALLOC", "").strip().lower() == "default":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    del gnu_get_libc_version
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = (mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1) and ok
    ok = (mallopt(_M_TOP_PAD, TOP_PAD) == 1) and ok
    return ok
