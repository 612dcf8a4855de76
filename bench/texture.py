"""Texture extraction: the synthetic round trip's PSNR (true and fitted pose) and the time per frame.

Usage: ``python bench/texture.py [--seeds 0,1,2] [--psnr-size 256] [--sizes 256,512] [--textures 512,1024]
[--runs 5] [--skip-fit]``; ``python bench/texture.py --texture-fit [--seeds 0,1,2,3,4]
[--weights 0.02,0.05,0.1] [--crop 64]``

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
3. ``--texture-fit`` (only this): the ``texture`` energy in the fit. Per seed a random hand at
   450 mm is rendered as a noisy depth frame (``render_depth_frame``) and as RGB (the pattern
   through ``TexturesUV``, grey background) by a 160 px camera; the fit (default stages, soft
   renderer, ``--crop`` px working size) starts 6-10 mm, 0.08 rad and 0.15 rad per joint away
   from the truth and runs without the texture term and with it at each of ``--weights``
   (reference: the true pattern, ``TextureReference``); same start, same budget. Prints the
   mean 3D keypoint error (mm), the IoU and the seconds per fit, and the means over the seeds.
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


def texture_fit(model, atlas, seeds, weights, crop: int) -> None:
    from fitting import FitConfig
    from fitting.preprocess import prepare
    from fitting.texture import TextureReference

    res = 160
    camera = Camera(220.0, 220.0, (res - 1) / 2, (res - 1) / 2, res, res)
    texture = uv_pattern(128)
    reference = TextureReference(atlas, texture)
    print(f"fit with the texture term: {res} px frames, {crop} px crops, default stages, soft renderer, "
          f"perturbed start; weights {weights}")
    rows = {w: [] for w in (0.0, *weights)}
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        truth = random_hand_parameters(model, g)
        truth["transl"] = torch.tensor([[0.0, 0.0, 450.0]])
        depth, _ = render_depth_frame(model, HybridRenderer(), truth, camera, g)
        with torch.no_grad():
            out = model(**truth)
        rgb = render_textured(out.vertices, atlas.faces, atlas.uv, atlas.face_uvs, texture, camera,
                              background=(0.3, 0.3, 0.3))[0]
        obs = Observation(depth=depth, camera=camera, rgb=rgb, name=str(seed))
        init = {k: v.clone() for k, v in truth.items()}
        init["transl"] = truth["transl"] + torch.tensor([[6.0, -5.0, 10.0]])
        init["global_orient"] = truth["global_orient"] + 0.08
        init["theta"] = truth["theta"] + 0.15 * torch.randn(truth["theta"].shape, generator=g)
        init["beta"] = torch.zeros_like(truth["beta"])
        cells = []
        for w in rows:
            config = FitConfig(working_size=crop, weights={"texture": w})
            fitter = Fitter(model, "soft", config, texture=reference if w else None)
            c = prepare(obs, config.box_mm, config.working_size)
            t0 = time.perf_counter()
            r = fitter.fit_crops([c], init=init, observations=[obs])[0]
            seconds = time.perf_counter() - t0
            err = float((r.keypoints - out.keypoints[0]).norm(dim=-1).mean())
            rows[w].append((err, r.metrics["iou"], seconds))
            cells.append(f"w={w:g}: {err:.2f} mm, IoU {r.metrics['iou']:.3f}, {seconds:.1f} s")
        print(f"  seed {seed}: " + "; ".join(cells), flush=True)
    print("  mean: " + "; ".join(
        f"w={w:g}: {statistics.fmean(e for e, _, _ in v):.2f} mm, IoU {statistics.fmean(i for _, i, _ in v):.3f}, "
        f"{statistics.fmean(s for _, _, s in v):.1f} s" for w, v in rows.items()), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the random hands")
    parser.add_argument("--psnr-size", type=int, default=256, help="side of the round trip's views, px")
    parser.add_argument("--sizes", default="256,512", help="image sides for the timing, px")
    parser.add_argument("--textures", default="512,1024", help="texture sides for the timing, texels")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-fit", action="store_true", help="the round trip with the true pose only")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--texture-fit", action="store_true", help="only the fit with the texture term (3.)")
    parser.add_argument("--weights", default="0.02,0.05,0.1", help="texture weights of --texture-fit")
    parser.add_argument("--crop", type=int, default=64, help="working size of --texture-fit, px")
    args = parser.parse_args()
    model = load_hand("default")
    atlas = uv_atlas(model)
    if args.texture_fit:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds != "0,1,2" else [0, 1, 2, 3, 4]
        texture_fit(model, atlas, seeds, [float(w) for w in args.weights.split(",")], args.crop)
        return 0
    print(f"threads {torch.get_num_threads()}; atlas: {atlas.source} UVs, {atlas.num_charts} chart(s)", flush=True)
    round_trip(model, atlas, [int(s) for s in args.seeds.split(",")], args.psnr_size, 512, fit=not args.skip_fit)
    if not args.skip_timing:
        timing(model, atlas, [int(s) for s in args.sizes.split(",")], [int(t) for t in args.textures.split(",")],
               args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
