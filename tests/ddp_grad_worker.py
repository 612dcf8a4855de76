"""A torchrun worker for tests/test_initializer.py: one DistributedDataParallel step.

``torchrun --nproc_per_node=2 tests/ddp_grad_worker.py BATCH.pt OUT.pt``: each rank joins the
process group (:func:`fitting.distributed.init_from_environment`, gloo on the CPU), builds the
same seeded :class:`fitting.initializer.DepthInitializer`, takes its half of the batch,
back-propagates the DeepHPS loss through DDP, and rank 0 saves the (all-reduced) gradients.
"""

import sys

import torch
from torch import nn

from fitting.distributed import close, init_from_environment
from fitting.initializer import DepthInitializer, initializer_loss
from hands import HandModel, default_hand_data


def main(batch_path: str, out_path: str) -> None:
    rank, world, dev = init_from_environment("cpu", backend="auto")
    batch = torch.load(batch_path)
    torch.manual_seed(0)
    hand = HandModel(default_hand_data()).to(torch.float64)
    net = DepthInitializer(hand, size=batch["depth"].shape[-1], dropout=0.0).to(torch.float64)
    model = nn.parallel.DistributedDataParallel(net, broadcast_buffers=False)
    n = batch["depth"].shape[0] // world
    part = slice(rank * n, (rank + 1) * n)
    loss, _ = initializer_loss(model(batch["depth"][part]), batch["keypoints"][part], batch["vertices"][part],
                               net.box_mm)
    loss.backward()
    if rank == 0:
        torch.save({k: p.grad for k, p in net.named_parameters()}, out_path)
    close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
