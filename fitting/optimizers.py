"""Optimizers over batches of independent fits: every frame of a batch has its own step size.

:class:`BatchedAdam` is the first-order optimizer of :meth:`fitting.Fitter.run`.
"""

from __future__ import annotations

import torch


class BatchedAdam:
    """Adam (Kingma and Ba, ICLR 2015) over (B, ...) tensors with a step size per frame.

    Frames of a batch are independent fits, so each has its own step-size scale and its own
    moment estimates, which :meth:`reset` clears (after a frame is sent back to its best
    state). Frames with ``active = False`` do not move and their moments do not age.

    Args:
        tensors: name -> (B, ...) leaf tensor, updated in place.
        learning_rates: name -> base step size (the parameter's units).

    Its state (moments, step counts) lives on the tensors' device, in their dtype.
    """

    def __init__(self, tensors: dict, learning_rates: dict, betas=(0.9, 0.999), eps: float = 1e-8):
        self.tensors, self.lr = tensors, learning_rates
        self.betas, self.eps = betas, eps
        first = next(iter(tensors.values()))
        self.m = {n: torch.zeros_like(t) for n, t in tensors.items()}
        self.v = {n: torch.zeros_like(t) for n, t in tensors.items()}
        self.steps = torch.zeros(first.shape[0], device=first.device, dtype=first.dtype)

    @torch.no_grad()
    def step(self, scale: torch.Tensor, active: torch.Tensor) -> None:
        """One step with step sizes ``lr * scale[b]`` for the ``active`` (B,) frames."""
        b1, b2 = self.betas
        self.steps += active.to(self.steps.dtype)
        t = self.steps.clamp(min=1)
        for n, x in self.tensors.items():
            if x.grad is None:
                continue
            shape = (-1,) + (1,) * (x.ndim - 1)
            on = active.view(shape)
            g = x.grad
            m = torch.where(on, b1 * self.m[n] + (1 - b1) * g, self.m[n])
            v = torch.where(on, b2 * self.v[n] + (1 - b2) * g * g, self.v[n])
            self.m[n], self.v[n] = m, v
            m_hat = m / (1 - b1 ** t).view(shape)
            v_hat = v / (1 - b2 ** t).view(shape)
            step = self.lr[n] * scale.view(shape) * m_hat / (v_hat.sqrt() + self.eps)
            x -= torch.where(on, step, torch.zeros_like(step))

    def reset(self, frames: torch.Tensor) -> None:
        """Forget the moments of the (B,) bool ``frames``."""
        for n in self.tensors:
            shape = (-1,) + (1,) * (self.m[n].ndim - 1)
            self.m[n] = torch.where(frames.view(shape), torch.zeros_like(self.m[n]), self.m[n])
            self.v[n] = torch.where(frames.view(shape), torch.zeros_like(self.v[n]), self.v[n])
        self.steps = torch.where(frames, torch.zeros_like(self.steps), self.steps)
