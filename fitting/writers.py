"""Writers of a :class:`FitResult`: params.json, result.npz, mesh.obj, overlay.png, energy.csv.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written output that looks finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import trimesh
from skimage.draw import disk, line

from hands import KEYPOINT_NAMES
from renderers import make_renderer

from .io import camera_to_dict

#: Bones drawn in the overlay: pairs of keypoint indices.
SKELETON = [(0, 1), (1, 2), (2, 3), (3, 4)] + [
    (a, b) for f in range(4) for a, b in ((0, 5 + 4 * f), (5 + 4 * f, 6 + 4 * f), (6 + 4 * f, 7 + 4 * f), (7 + 4 * f, 8 + 4 * f))
]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def overlay_image(depth: torch.Tensor, silhouette: torch.Tensor, keypoints_uv: torch.Tensor) -> np.ndarray:
    """RGB (H, W, 3) uint8: depth in grey, the rendered silhouette in green, keypoints in red.

    Args:
        depth: (H, W) mm, 0 = no measurement (shown black); nearer is brighter.
        silhouette: (H, W) in [0, 1], the rendered hand in the same image.
        keypoints_uv: (21, 2) pixel coordinates (OpenCV convention).
    """
    d = depth.detach().cpu().numpy()
    valid = d > 0
    grey = np.zeros_like(d)
    if valid.any():
        near, far = np.percentile(d[valid], [1, 99])
        grey[valid] = 1.0 - np.clip((d[valid] - near) / max(far - near, 1e-6), 0, 1) * 0.8
    rgb = np.repeat(grey[..., None], 3, axis=2)
    s = silhouette.detach().cpu().numpy()[..., None]
    rgb = rgb * (1 - 0.5 * s) + 0.5 * s * np.array([0.1, 1.0, 0.2])
    img = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    H, W = d.shape
    uv = keypoints_uv.detach().cpu().numpy()
    for a, b in SKELETON:
        (ca, ra), (cb, rb) = np.round(uv[a]).astype(int), np.round(uv[b]).astype(int)
        rr, cc = line(ra, ca, rb, cb)
        ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        img[rr[ok], cc[ok]] = (255, 220, 0)
    radius = max(1.5, min(H, W) / 160)
    for u, v in uv:
        rr, cc = disk((v, u), radius, shape=(H, W))
        img[rr, cc] = (255, 30, 30)
    return img


def write_result(result, out_dir: str | Path, renderer=None) -> dict[str, Path]:
    """Write one frame's fit (a :class:`fitting.FitResult`) into ``out_dir``.

    Files: ``params.json`` (parameters, metrics, keypoints with their names, camera),
    ``result.npz`` (vertices, faces, keypoints, parameters; mm, input camera coordinates),
    ``mesh.obj`` (mm, input camera coordinates), ``overlay.png`` (the rendered silhouette and
    keypoints over the full depth frame) and ``energy.csv`` (one row per iteration).

    Args:
        result: the fit, with its ``observation`` (the full input frame and its camera).
        out_dir: the folder (created if missing).
        renderer: renders the overlay's silhouette at the frame's resolution (default: the
            soft rasterizer).

    Returns:
        file name -> path.

    Raises:
        ValueError: the result has no observation.
    """
    if result.observation is None:
        raise ValueError(f"{result.name}: the result has no observation (its depth frame and camera are "
                         "needed for the overlay)")
    depth, camera = result.observation.depth, result.observation.camera
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = {k: v.tolist() for k, v in result.params.items() if k != "offsets"}
    doc = {
        "name": result.name,
        "units": "millimetres, radians; camera coordinates of the input frame (OpenCV axes)",
        "metrics": result.metrics,
        "keypoint_names": list(KEYPOINT_NAMES),
        "keypoints": result.keypoints.tolist(),
        "params": params,
        "camera": camera_to_dict(camera),
    }
    paths = {name: out / name for name in ("params.json", "result.npz", "mesh.obj", "overlay.png", "energy.csv")}
    _atomic_write(paths["params.json"], json.dumps(doc, indent=1).encode())

    buf = io.BytesIO()
    np.savez_compressed(buf, vertices=result.vertices.numpy(), faces=result.faces.numpy(),
                        keypoints=result.keypoints.numpy(),
                        **{k: v.numpy() for k, v in result.params.items()})
    _atomic_write(paths["result.npz"], buf.getvalue())

    mesh = trimesh.Trimesh(result.vertices.numpy(), result.faces.numpy(), process=False)
    _atomic_write(paths["mesh.obj"], mesh.export(file_type="obj").encode())

    renderer = renderer or make_renderer("soft")
    vertices = result.vertices[None].to(camera.dtype)
    with torch.no_grad():
        render = renderer(vertices, result.faces, camera)
    uv = camera.project(result.keypoints[None].to(camera.dtype))[0]
    img = overlay_image(depth, render.silhouette[0], uv)
    _atomic_write(paths["overlay.png"], iio.imwrite("<bytes>", img, extension=".png"))

    terms = sorted({k for h in result.history for k in h} - {"stage", "iteration", "active"})
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["step", "stage", "iteration", *terms])
    for step, h in enumerate(result.history):
        writer.writerow([step, h["stage"], h["iteration"], *[f"{h.get(k, float('nan')):.6g}" for k in terms]])
    _atomic_write(paths["energy.csv"], text.getvalue().encode())
    return paths
