"""Time of projecting a batch of hand vertices: our formula vs kornia's ``project_points``.

Usage: ``python bench/camera_project.py [--batch 16] [--points 1609] [--runs 2000] [--device cpu]``
(kornia comes with the ``test`` extra: ``pip install -e '.[test]'``).

The renderers call :meth:`renderers.Camera.project` once per iteration on (B, V, 3) float32
vertices (V = 1609 for the default hand), so its cost is per-iteration overhead. Three ways
to project the same points with the same camera are timed, forward alone and forward +
backward (to the points and the focal length), interleaved in one process, median of
``--runs`` runs after a warm-up:

* ``formula``: ``u = fx x / z + cx``, ``v = fy y / z + cy`` on the (B,) parameters;
* ``kornia``: ``kornia.geometry.camera.perspective.project_points(points, K)`` with ``K``
  built from the parameters in each call (what a Camera holding fx, fy, cx, cy would do);
* ``kornia-K``: the same with ``K`` built once outside the timed region;
* ``Camera``: :meth:`renderers.Camera.project` as it is now.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from kornia.geometry.camera.perspective import project_points

from renderers import Camera


def _formula(points, fx, fy, cx, cy):
    x, y, z = points.unbind(-1)
    return torch.stack([fx[:, None] * (x / z) + cx[:, None], fy[:, None] * (y / z) + cy[:, None]], -1)


def _K(fx, fy, cx, cy):
    z, o = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, z, cx, z, fy, cy, z, z, o], -1).reshape(-1, 3, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--points", type=int, default=1609)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    B, N = args.batch, args.points
    pts = (torch.randn(B, N, 3, generator=g) * 40 + torch.tensor([0.0, 0.0, 500.0])).to(dev)
    pts.requires_grad_(True)
    fx = torch.full((B,), 476.0, device=dev, requires_grad=True)
    fy, cx, cy = (torch.full((B,), v, device=dev) for v in (476.0, 313.7, 242.8))
    cam = Camera(fx, fy, cx, cy, 640, 480)
    K = _K(fx, fy, cx, cy).detach()
    ways = {
        "formula": lambda: _formula(pts, fx, fy, cx, cy),
        "kornia": lambda: project_points(pts, _K(fx, fy, cx, cy)),
        "kornia-K": lambda: project_points(pts, K),
        "Camera": lambda: cam.project(pts),
    }
    ref = ways["formula"]()
    for name, f in ways.items():
        assert torch.allclose(f(), ref, atol=1e-4, rtol=0), name
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = {(n, m): [] for n in ways for m in ("fwd", "fwd+bwd")}
    for run in range(args.runs + 20):
        for name, f in ways.items():
            for mode in ("fwd", "fwd+bwd"):
                sync()
                t0 = time.perf_counter()
                if mode == "fwd":
                    with torch.no_grad():
                        f()
                else:
                    f().square().mean().backward()
                sync()
                if run >= 20:
                    times[name, mode].append(time.perf_counter() - t0)
    print(f"project (B, N, 3) = ({B}, {N}, 3) float32 on {dev}, median of {args.runs} runs, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':10s} {'fwd us':>10s} {'fwd+bwd us':>12s} {'(means)':>20s}")
    for name in ways:
        med = [statistics.median(times[name, m]) * 1e6 for m in ("fwd", "fwd+bwd")]
        mean = [statistics.fmean(times[name, m]) * 1e6 for m in ("fwd", "fwd+bwd")]
        print(f"{name:10s} {med[0]:10.1f} {med[1]:12.1f} {mean[0]:9.1f} {mean[1]:10.1f}")


if __name__ == "__main__":
    main()
