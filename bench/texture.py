"""Texture extraction: the synthetic round trip's PSNR (true and fitted pose) and the time per frame.

Usage: ``python bench/texture.py [--seeds 0,1,2] [--psnr-size 256] [--sizes 256,512] [--textures 512,1024]
[--runs 5] [--skip-fit]``

1. Round trip: a random hand (``fitting.synthetic.random_hand_parameters``, its distance set to
   400 mm) wearing the known pattern ``uv_pattern`` is rendered through PyTorch3D's
   ``TexturesUV`` from 3 views (-60, 0, +60 degrees about the vertical through the hand) at
   ``--psnr-size`` px; the texture (512 texels) is extracted with the true mesh, and with the
   mesh fitted (default stages, soft renderer) to a noisy depth frame of the middle view
   (``render_depth_frame``: 1.5 mm noise, a wall behind). Prints the PSNR over the seen texels
   against the true texture, the seen share of the atlas and, for the fit, its IoU and mean
   vertex error (mm).
2. Time per frame of ``TextureAccumulator.add`` (one view, and three views of one frame) at each
   image size and texture size, with PyTorch3D's ``MeshRasterizer`` (the default) and with the
   ``soft`` renderer's z-buffer for the visibility: the median of ``--runs`` runs after one
   warm-up, and the time of the final ``texture()`` fill (once per run) and of building the
   texel map (once per atlas and size).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from fitting import Fitter, Observation
from fitting.synthetic import orbit_views, random_hand_parameters, render_depth_frame, render_textured, uv_pattern
from fitting.texture import TextureAccumulator, TextureSettings
from fitting.uv_atlas import uv_atlas
from hands import load_hand
from renderers import Camera, HybridRenderer

ANGLES = (-60.0, 0.0, 60.0)


def camera_for(size: int) -> Camera:
    """A square camera in which a hand at 400 mm fills about 80 % of the image."""
    f = 250.0 * size / 128
    return Camera(f, f, (size - 1) / 2, (size - 1) / 2, size, size)


def psnr_seen(acc: TextureAccumulator, truth: torch.Tensor) -> float:
    seen = acc.seen
    mse = ((acc.texture() - truth)[:, seen] ** 2).mean()
    return float(10 * torch.log10(1 / mse))


def round_trip(model, atlas, seeds, size: int, texture_size: int, fit: bool) -> None:
    camera = camera_for(size)
    truth_texture = uv_pattern(texture_size)
    covered = atlas.texel_map(texture_size).covered
    fitter = Fitter(model, "soft") if fit else None
    print(f"round trip, {size} px views, {texture_size} texels, 3 views at {ANGLES} degrees:")
    rows = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        p = random_hand_parameters(model, g, distance_mm=400.0)
        with torch.no_grad():
            vertices = model(**p).vertices
        centre = vertices[0].mean(0)
        views = orbit_views(vertices, ANGLES, centre=centre)
        rgb = render_textured(views, atlas.faces, atlas.uv, atlas.face_uvs, truth_texture, camera)
        acc = TextureAccumulator(atlas, texture_size)
        acc.add(rgb, camera, views)
        row = {"seed": seed, "true": psnr_seen(acc, truth_texture), "seen": float(acc.seen[covered].float().mean())}
        if fitter is not None:
            depth, _ = render_depth_frame(model, HybridRenderer(), p, camera, g)
            result = fitter.fit(Observation(depth=depth, camera=camera, name=str(seed)))
            fitted = result.vertices[None].float()
            fit_acc = TextureAccumulator(atlas, texture_size)
            fit_acc.add(rgb, camera, orbit_views(fitted, ANGLES, centre=centre))
            row.update(fit=psnr_seen(fit_acc, truth_texture), fit_seen=float(fit_acc.seen[covered].float().mean()),
                       iou=result.metrics["iou"], v_err=float((fitted[0] - vertices[0]).norm(dim=-1).mean()))
        rows.append(row)
        line = f"  seed {seed}: true pose PSNR {row['true']:.1f} dB ({100 * row['seen']:.0f} % seen)"
        if fit:
            line += (f"; fitted from depth PSNR {row['fit']:.1f} dB ({100 * row['fit_seen']:.0f} % seen), "
                     f"IoU {row['iou']:.3f}, mean vertex error {row['v_err']:.1f} mm")
        print(line, flush=True)
    mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0] if k != "seed"}
    line = f"  mean: true pose {mean['true']:.1f} dB"
    if fit:
        line += f"; fitted {mean['fit']:.1f} dB, IoU {mean['iou']:.3f}, vertex error {mean['v_err']:.1f} mm"
    print(line, flush=True)


def timing(model, atlas, sizes, textures, runs: int) -> None:
    p = random_hand_parameters(model, torch.Generator().manual_seed(0), distance_mm=400.0)
    with torch.no_grad():
        vertices = model(**p).vertices
    views = orbit_views(vertices, ANGLES)
    print(f"time per frame of TextureAccumulator.add (median of {runs} runs), fill = texture() once per run:")
    fresh = uv_atlas(model)  # no texel map cached yet
    for T in textures:
        t0 = time.perf_counter()
        fresh.texel_map(T)
        print(f"  texel map {T}: {time.perf_counter() - t0:.2f} s (once per atlas and size)")
    for size in sizes:
        camera = camera_for(size)
        rgb = render_textured(views, atlas.faces, atlas.uv, atlas.face_uvs, uv_pattern(512), camera)
        for T in textures:
            cells = []
            for rasterizer in ("pytorch3d", "soft"):
                for B in (1, 3):
                    acc = TextureAccumulator(atlas, T, TextureSettings(rasterizer=rasterizer))
                    acc.add(rgb[:B], camera, views[:B])  # warm-up (caches the texel tensors)
                    times = []
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        acc.add(rgb[:B], camera, views[:B])
                        times.append(time.perf_counter() - t0)
                    cells.append(f"{rasterizer} {B} view{'s' if B > 1 else ''} {statistics.median(times):.2f} s")
            t0 = time.perf_counter()
            acc.texture()
            cells.append(f"fill {time.perf_counter() - t0:.2f} s")
            print(f"  {size} px, {T} texels: " + ", ".join(cells), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the random hands")
    parser.add_argument("--psnr-size", type=int, default=256, help="side of the round trip's views, px")
    parser.add_argument("--sizes", default="256,512", help="image sides for the timing, px")
    parser.add_argument("--textures", default="512,1024", help="texture sides for the timing, texels")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-fit", action="store_true", help="the round trip with the true pose only")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    model = load_hand("default")
    atlas = uv_atlas(model)
    print(f"threads {torch.get_num_threads()}; atlas: {atlas.source} UVs, {atlas.num_charts} chart(s)", flush=True)
    round_trip(model, atlas, [int(s) for s in args.seeds.split(",")], args.psnr_size, 512, fit=not args.skip_fit)
    if not args.skip_timing:
        timing(model, atlas, [int(s) for s in args.sizes.split(",")], [int(t) for t in args.textures.split(",")],
               args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
