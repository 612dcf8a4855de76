"""Joining a ``torchrun`` launch: one process per GPU (or per CPU share), frames sharded by rank.

``torchrun`` (PyTorch's launcher; no launcher of ours) starts the processes and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous; :func:`init_from_environment`
joins the process group it describes and picks the rank's device. The ranks only need
barriers (the frames are independent; each rank writes its own files), so the group uses the
``gloo`` backend on every device. One machine with 4 GPUs::

    torchrun --nproc_per_node=4 --no-python handfit fit-dataset FRAMES --out OUT ...

Two machines (run on each; ``HOST:PORT`` is reachable from both)::

    torchrun --nnodes=2 --nproc_per_node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 \\
        --rdzv-id=fit1 --no-python handfit fit-dataset FRAMES --out SHARED_OUT ...

``OUT`` must be one folder that every rank can write (a shared file system across machines).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from .fitter import resolve_device

__all__ = ["init_from_environment", "close", "BARRIER_TIMEOUT"]

#: How long a rank waits at a barrier for the others. The last barrier of a run waits for the
#: slowest rank's share of the frames; a rank that dies does not leave the others waiting
#: this long (torchrun stops them).
BARRIER_TIMEOUT = datetime.timedelta(hours=48)


def init_from_environment(device="auto", backend: str = "gloo") -> tuple[int, int, torch.device]:
    """Join the process group of a torchrun launch, if this process is part of one.

    Args:
        device: the device asked for (``"auto"``, ``"cpu"``, ``"cuda"``...); under torchrun a
            CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process).
        backend: the process group's backend: ``"gloo"`` (the default: barriers only),
            ``"nccl"``, or ``"auto"`` (NCCL on CUDA, gloo on the CPU; for
            ``DistributedDataParallel`` training, :func:`fitting.initializer.train`).

    Returns:
        (rank, world size, this rank's device); (0, 1, the device) outside torchrun.

    Raises:
        ValueError: a bad device (see :func:`fitting.fitter.resolve_device`), or more
            processes on this machine than GPUs when fitting on CUDA.
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, dev
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"torchrun started local rank {local} but this machine has "
                             f"{torch.cuda.device_count()} GPUs; use --nproc_per_node <= the GPU count")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    return dist.get_rank(), dist.get_world_size(), dev


def close() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
