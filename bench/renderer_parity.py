"""Parity of the ``soft``, ``splat`` and ``hybrid`` renderers with PyTorch3D's own pipeline, and
forward + backward time of each, on the default hand.

Usage: ``python bench/renderer_parity.py [--sizes 64,128,256] [--poses 3] [--runs 3]
[--sigma-px 0.5] [--reference-k 64] [--device cpu]``

The reference is :class:`renderers.PyTorch3DRenderer` (PyTorch3D's ``MeshRenderer`` +
``SoftSilhouetteShader`` silhouette, the ``zbuf`` of a hard ``MeshRasterizer`` pass for depth
and mask) with ``--reference-k`` faces per pixel, enough that its K-nearest blend is the
aggregate over every face within the blur radius. The default hand, in ``--poses`` random
poses (seeds 0, 1, ...) at 450 mm, fills most of a square image (a 220 mm box). Every renderer
runs at its default settings with the same blur (``--sigma-px``); ``pytorch3d`` is the
reference pipeline at its default 16 faces per pixel. Per size and renderer it prints, as the
mean over the poses (and the worst pose):

* ``sil MAD``: mean absolute difference of the soft silhouettes, over all pixels;
* ``mask IoU``: intersection over union of the hard masks;
* ``depth MAD``: mean absolute depth difference (mm) over the pixels both masks cover;
* ``fwd+bwd ms``: forward + backward time of one frame (pose 0; loss ``silhouette.sum() +
  depth.sum()``), the median of ``--runs`` runs after one warm-up, interleaved across the
  renderers in one process so that the ratios hold on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from fitting.synthetic import random_hand_parameters
from hands import HandModel, default_hand_data
from renderers import Camera, PyTorch3DRenderer, make_renderer

REFERENCE = "pytorch3d-ref"


def crop_camera(size: int, device) -> Camera:
    f = size * 450.0 / 220.0  # a 220 mm box at 450 mm fills the image
    return Camera(f, f, size / 2 - 0.5, size / 2 - 0.5, size, size, device=device)


def parity(out, ref) -> tuple[list, list, list]:
    """Per batch element: silhouette MAD, mask IoU, depth MAD (mm) over the pixels both cover."""
    sil, iou, depth = [], [], []
    for b in range(ref.mask.shape[0]):
        sil.append(float((out.silhouette[b] - ref.silhouette[b]).abs().mean()))
        union = float((out.mask[b] | ref.mask[b]).sum())
        iou.append(float((out.mask[b] & ref.mask[b]).sum()) / max(union, 1.0))
        both = out.mask[b] & ref.mask[b]
        depth.append(float((out.depth[b] - ref.depth[b])[both].abs().mean()) if both.any() else float("nan"))
    return sil, iou, depth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--poses", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sigma-px", type=float, default=0.5)
    parser.add_argument("--reference-k", type=int, default=64, help="faces per pixel of the reference")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.runs < 1 or args.poses < 1:
        parser.error("--runs and --poses must be >= 1")
    device = torch.device(args.device)

    model = HandModel(default_hand_data())
    verts = []
    for seed in range(args.poses):
        params = random_hand_parameters(model, torch.Generator().manual_seed(seed))
        params["transl"] = torch.tensor([[0.0, 0.0, 450.0]])
        with torch.no_grad():
            verts.append(model(**params).vertices[0])
    verts = torch.stack(verts).to(device)
    faces = model.faces.to(device)
    s = args.sigma_px
    renderers = {
        REFERENCE: (PyTorch3DRenderer(), {"sigma_px": s, "faces_per_pixel": args.reference_k}),
        "pytorch3d": (make_renderer("pytorch3d"), {"sigma_px": s}),
        "hybrid": (make_renderer("hybrid"), {"sigma_px": s}),
        "soft": (make_renderer("soft"), {"sigma_px": s}),
        "splat": (make_renderer("splat"), {}),
    }

    print(f"default hand ({verts.shape[1]} vertices, {faces.shape[0]} faces), {args.poses} poses, {device}, "
          f"sigma {s} px, reference: PyTorch3DRenderer with {args.reference_k} faces per pixel, "
          f"{torch.get_num_threads()} threads; time: median of {args.runs} runs, one frame")
    print(f"{'size':>5s} {'renderer':14s} {'sil MAD (worst)':>20s} {'mask IoU (worst)':>18s} "
          f"{'depth MAD mm (worst)':>22s} {'fwd+bwd ms':>11s}")
    for size in (int(x) for x in args.sizes.split(",")):
        cam = crop_camera(size, device)
        with torch.no_grad():
            outs = {name: r(verts, faces, cam, **kw) for name, (r, kw) in renderers.items()}

        def run(name):
            r, kw = renderers[name]
            v = verts[:1].clone().requires_grad_(True)
            out = r(v, faces, cam, **kw)
            (out.silhouette.sum() + out.depth.sum()).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()

        times = {name: [] for name in renderers}
        for name in renderers:  # warm-up
            run(name)
        for _ in range(args.runs):
            for name in renderers:
                t0 = time.perf_counter()
                run(name)
                times[name].append(time.perf_counter() - t0)
        for name in renderers:
            t = statistics.median(times[name]) * 1e3
            if name == REFERENCE:
                print(f"{size:5d} {name:14s} {'-':>20s} {'-':>18s} {'-':>22s} {t:11.0f}", flush=True)
                continue
            sil, iou, depth = parity(outs[name], outs[REFERENCE])
            print(f"{size:5d} {name:14s} {statistics.fmean(sil):9.2e} ({max(sil):8.2e}) "
                  f"{statistics.fmean(iou):8.4f} ({min(iou):7.4f}) "
                  f"{statistics.fmean(depth):10.2e} ({max(depth):9.2e}) {t:11.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
