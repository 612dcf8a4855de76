"""Forward + backward time and peak memory of each renderer on the default hand.

Usage: ``python bench/renderer_speed.py [--sizes 64,128,256] [--runs 7] [--batch 1] [--device cpu]``

For each image size, the default hand in a random pose fills most of a square image and is
rendered, and a loss on the outputs back-propagated to the vertices, by:

* ``p3d-soft``: PyTorch3D's own ``MeshRasterizer`` + ``SoftSilhouetteShader`` blend with
  ``faces_per_pixel`` 25 and PyTorch3D's autograd (the baseline of the ratios);
* ``p3d-depth``: PyTorch3D's ``MeshRasterizer`` z-buffer (1 face per pixel, no blur);
* ``pytorch3d``: :class:`renderers.PyTorch3DRenderer`, the same PyTorch3D pipeline behind our
  interface (silhouette with its default 16 faces per pixel, plus the hard z-buffer pass);
* ``hybrid``: :class:`renderers.HybridRenderer` (PyTorch3D fragments, our own z-buffer and blend);
* ``soft``: :class:`renderers.SoftRasterizer` (silhouette + exact depth);
* ``soft+sd``: the same with the aggregated soft depth;
* ``splat``: :class:`renderers.SplatRenderer`.

All at the same blur (``--sigma-px``, 0.5 px). Timings are medians of ``--runs`` runs after
one warm-up, interleaved across renderers in one process, so that the ratios to ``p3d-soft``
(the last columns) hold even on a shared machine. Peak memory is the growth of the process's
peak resident set during one forward + backward (Linux ``VmHWM`` after a reset through
``/proc/self/clear_refs``; on CUDA ``torch.cuda.max_memory_allocated``); on the CPU, blocks
of 64 kB and more are then allocated with ``mmap`` (``mallopt``) so that freed tensors leave
the resident set and each renderer's peak is its own. The last column is the ratio to
PyTorch3D's z-buffer (``p3d-depth``), the reference of the splat renderer.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import re
import statistics
import sys
import time

import torch
from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
from pytorch3d.renderer.blending import BlendParams, sigmoid_alpha_blend
from pytorch3d.structures import Meshes

from fitting.synthetic import random_hand_parameters
from hands import HandModel, default_hand_data
from renderers import Camera, PyTorch3DRenderer, PyTorch3DRenderSettings, make_renderer

BASELINE = "p3d-soft"
DEPTH_BASELINE = "p3d-depth"


def release_freed_memory() -> None:
    """Allocate blocks of 64 kB and more with mmap, so that freeing returns them to the OS."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _status_bytes(key: str) -> int:
    match = re.search(rf"{key}:\s+(\d+) kB", open("/proc/self/status").read())
    return int(match.group(1)) * 1024


def peak_memory(fn, device: torch.device) -> float:
    """Peak memory growth (MB) while ``fn()`` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 1e6
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan")
    before = _status_bytes("VmRSS")
    fn()
    return max(_status_bytes("VmHWM") - before, 0) / 1e6


def pytorch3d_soft(verts, faces, camera, sigma_px: float, faces_per_pixel: int = 25):
    """PyTorch3D's MeshRasterizer + SoftSilhouetteShader blend, PyTorch3D autograd."""
    H, W = camera.height, camera.width
    settings = PyTorch3DRenderSettings(sigma_px=sigma_px)
    fragments = MeshRasterizer(PyTorch3DRenderer.to_pytorch3d_cameras(camera), RasterizationSettings(
        image_size=(H, W), blur_radius=settings.blur_radius(H, W), faces_per_pixel=faces_per_pixel,
        bin_size=0 if verts.device.type == "cpu" else None, perspective_correct=True,
    ))(Meshes(verts=verts, faces=faces.expand(verts.shape[0], -1, -1)))
    colors = torch.ones(*fragments.pix_to_face.shape, 3, device=verts.device)
    return sigmoid_alpha_blend(colors, fragments, BlendParams(sigma=settings.sigma_ndc(H, W)))[..., 3]


def pytorch3d_depth(verts, faces, camera):
    """PyTorch3D's MeshRasterizer z-buffer (one face per pixel, no blur)."""
    fragments = MeshRasterizer(PyTorch3DRenderer.to_pytorch3d_cameras(camera), RasterizationSettings(
        image_size=(camera.height, camera.width), blur_radius=0.0, faces_per_pixel=1,
        bin_size=0 if verts.device.type == "cpu" else None, perspective_correct=True,
    ))(Meshes(verts=verts, faces=faces.expand(verts.shape[0], -1, -1)))
    return fragments.zbuf[..., 0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sigma-px", type=float, default=0.5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip", default="", help="comma-separated renderers to leave out")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    device = torch.device(args.device)
    if device.type == "cpu":
        release_freed_memory()

    model = HandModel(default_hand_data()).to(device)
    params = random_hand_parameters(model.cpu(), torch.Generator().manual_seed(0))
    model = model.to(device)
    params = {k: v.to(device).expand(args.batch, *v.shape[1:]).clone() for k, v in params.items()}
    params["transl"][:, :2] = 0.0
    params["transl"][:, 2] = 450.0
    with torch.no_grad():
        verts0 = model(**params).vertices
    faces = model.faces
    soft, splat = make_renderer("soft"), make_renderer("splat")
    ours_p3d, hybrid = make_renderer("pytorch3d"), make_renderer("hybrid")
    s = args.sigma_px
    renderers = {
        "p3d-soft": lambda v, cam: pytorch3d_soft(v, faces, cam, s).sum(),
        "p3d-depth": lambda v, cam: pytorch3d_depth(v, faces, cam).sum(),
        "pytorch3d": lambda v, cam: sum(x.sum() for x in ours_p3d(v, faces, cam, sigma_px=s)[:2]),
        "hybrid": lambda v, cam: sum(x.sum() for x in hybrid(v, faces, cam, sigma_px=s)[:2]),
        "soft": lambda v, cam: sum(x.sum() for x in soft(v, faces, cam, sigma_px=s)[:2]),
        "soft+sd": lambda v, cam: sum(x.sum() for x in soft(v, faces, cam, sigma_px=s, soft_depth=True)[::3]),
        "splat": lambda v, cam: sum(x.sum() for x in splat(v, faces, cam)[:2]),
    }
    for name in filter(None, args.skip.split(",")):
        renderers.pop(name, None)

    print(f"default hand ({verts0.shape[1]} vertices, {faces.shape[0]} faces), batch {args.batch}, "
          f"{device}, sigma {s} px, {torch.get_num_threads()} threads, median of {args.runs} runs")
    print(f"{'size':>5s} {'renderer':10s} {'fwd+bwd ms':>11s} {'peak MB':>9s} {'x faster than ' + BASELINE:>24s} "
          f"{'x ' + DEPTH_BASELINE:>12s}")
    for size in (int(x) for x in args.sizes.split(",")):
        f = size * 450.0 / 220.0  # a 220 mm box at 450 mm fills the image
        cam = Camera(f, f, size / 2 - 0.5, size / 2 - 0.5, size, size, device=device)

        def run(name):
            v = verts0.clone().requires_grad_(True)
            renderers[name](v, cam).backward()
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
        memory = {name: peak_memory(lambda: run(name), device) for name in renderers}
        base = statistics.median(times[BASELINE]) if BASELINE in times else float("nan")
        depth_base = statistics.median(times[DEPTH_BASELINE]) if DEPTH_BASELINE in times else float("nan")
        for name in renderers:
            t = statistics.median(times[name])
            print(f"{size:5d} {name:10s} {t * 1e3:11.2f} {memory[name]:9.1f} {base / t:24.1f} {depth_base / t:12.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
