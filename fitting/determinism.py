"""Bit-identical fits on the CPU, whatever the machine's load and the number of threads.

The one source of run-to-run differences found (issue 15)
---------------------------------------------------------
Every read by advanced indexing, ``verts[:, faces]`` (the renderers' face corners),
``flat[pf]`` (a face per pixel pair), ``vertices[:, palm_index]`` and so on, has as its
backward pass an accumulating ``index_put_``. PyTorch's CPU kernel for it (ATen
``index_put_kernel``, torch 2.x) adds float32 values with *atomic adds from several threads*
when the gradient has at least ``GRAIN_SIZE`` = 32768 elements and more than one thread is
available, unless deterministic algorithms are on; it is serial otherwise. With atomic adds
the order in which a vertex's contributions are summed follows the threads' timing, so the
last bits of a gradient differ from run to run, Adam carries them on, and the fits drift
apart: on a quiet machine the two threads keep about the same pace and the order rarely
changes, on a busy one it changes on every call. The search already fits four candidates per
frame and a sequence's shape frames are fitted as one batch, so these gradients pass the
threshold even for one frame (``tests/test_determinism.py``).

With :func:`torch.use_deterministic_algorithms` the kernel adds serially in index order.
Everything else the fit runs was checked to be bitwise the same at 1 and 2 threads, loaded or
not (forward energies, each energy's gradients, the search, the stages): the other
reductions split their work by output element, not by thread, at the fit's sizes.

What :func:`deterministic` does
-------------------------------
For fits on the CPU (and only while the fit runs; the previous settings are restored): turn
deterministic algorithms on with ``warn_only=True`` (an op without a deterministic CPU
kernel warns instead of raising) and leave ``torch.utils.deterministic.fill_uninitialized_memory``
off (it would fill every ``torch.empty`` with NaN, a cost that buys nothing here). The settings
are process-wide: another Python thread running PyTorch during a fit runs deterministically
too. CUDA fits are left alone (CUDA's deterministic mode needs ``CUBLAS_WORKSPACE_CONFIG`` and
raises for some ops). A caller who turned deterministic algorithms on already keeps their
settings. The switch is ATen's own (``torch._C._set_deterministic_algorithms``, what
:func:`torch.use_deterministic_algorithms` calls): the public function also imports
``torch._inductor`` to set inductor's flag, about 2 s on the first call of a process, for
compiled code that fits never run; the public function is used where the private one is
missing. ``FitConfig(deterministic=False)`` skips all this (``bench/determinism.py`` measured no
speed difference on 2 cores, at 1 thread or 2; results then vary under load).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.utils.deterministic

__all__ = ["deterministic"]


def _set_deterministic(mode: bool, warn_only: bool) -> None:
    switch = getattr(torch._C, "_set_deterministic_algorithms", None)
    if switch is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        switch(mode, warn_only=warn_only)


@contextlib.contextmanager
def deterministic(device, enabled: bool = True) -> Iterator[None]:
    """Run the block with PyTorch's deterministic CPU kernels (see the module docstring).

    Args:
        device: the fit's device (a :class:`torch.device` or a name); nothing changes unless
            it is the CPU.
        enabled: False changes nothing (``FitConfig.deterministic``).

    Nests: an inner block finds the setting on and leaves it as it is.

    Example:
        >>> with deterministic("cpu"):
        ...     torch.are_deterministic_algorithms_enabled()
        True
    """
    if not enabled or torch.device(device).type != "cpu" or torch.are_deterministic_algorithms_enabled():
        yield
        return
    fill = torch.utils.deterministic.fill_uninitialized_memory
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.utils.deterministic.fill_uninitialized_memory = False
    _set_deterministic(True, warn_only=True)
    try:
        yield
    finally:
        _set_deterministic(False, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill
