"""Writers of a :class:`FitResult`: params.json, result.npz, mesh.obj, overlay.png, energy.csv.

A result folder is written whole into a temporary sibling folder and renamed into place
(:func:`write_result`), so an interrupted run never leaves a folder that mixes two fits or
looks finished when it is not; :func:`check_output_dir` checks a destination before any work.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import trimesh
from skimage.draw import disk, line

from hands import KEYPOINT_NAMES
from renderers import make_renderer

from .errors import InputError
from .io import camera_to_dict

#: The files of a result folder.
RESULT_FILES = ("params.json", "result.npz", "mesh.obj", "overlay.png", "energy.csv")

#: Bones drawn in the overlay: pairs of keypoint indices.
SKELETON = [(0, 1), (1, 2), (2, 3), (3, 4)] + [
    (a, b) for f in range(4) for a, b in ((0, 5 + 4 * f), (5 + 4 * f, 6 + 4 * f), (6 + 4 * f, 7 + 4 * f), (7 + 4 * f, 8 + 4 * f))
]


def write_segmentation_debug(path, depth: torch.Tensor, segmentation) -> str:
    """Draw every candidate blob of a segmentation and say why it won or lost.

    The picture (RGB PNG of the frame's size): depth in grey; each candidate's outline
    (``skimage.segmentation.find_boundaries``) in green for the hand, red for a rejected blob
    and orange for one that qualified but lost the ranking; the forearm cut (when a forearm
    from the border was cut) as a blue line across the wrist. Next to it, ``path`` with the
    suffix ``.txt``: one line per candidate (nearest first, the colour, its depth, area, palm
    width, hand-likeness score and the reason), which is also returned.

    Args:
        path: the PNG to write.
        depth: (H, W) mm, the frame.
        segmentation: a :class:`fitting.preprocess.Segmentation` (``segment_hand(...,
            return_info=True)``); candidates of another size than the frame (a decimated
            copy) are drawn scaled to it.

    Raises:
        InputError: the PNG or the text file cannot be written (the message names the path).
    """
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    d = depth.detach().cpu().float().numpy()
    valid = d > 0
    img = np.full(d.shape + (3,), 255, np.uint8)
    if valid.any():
        lo, hi = np.percentile(d[valid], [1, 99])
        grey = (1 - np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1)) * 200 + 30
        img[valid] = grey[valid, None].astype(np.uint8)
    colours = {"hand": (0, 200, 0), "rejected": (230, 0, 0), "lost": (255, 150, 0)}
    lines = []
    for i, c in enumerate(segmentation.candidates, 1):
        kind = "hand" if c.chosen else ("rejected" if not c.reason.startswith(("less hand-like", "farther"))
                                        else "lost")
        mask = c.mask
        if mask.shape != d.shape:
            mask = resize(mask.astype(float), d.shape, order=0) > 0.5
        edge = find_boundaries(mask, mode="inner")
        edge = edge | np.roll(edge, 1, 0) | np.roll(edge, 1, 1)
        img[edge] = colours[kind]
        why = "chosen: the most hand-like, nearest qualifying blob" if c.chosen and not c.reason else (c.reason or "")
        if c.chosen and c.reason:
            why = f"chosen although it fails ({c.reason}): no blob qualifies, the nearest is kept"
        lines.append(f"{i}. {colours_name(kind)}: z_near {c.z_near_mm:.0f} mm, area {c.area_mm2:,.0f} mm^2, "
                     f"palm width {c.palm_width_mm:.0f} mm, depth extent {c.depth_extent_mm:.0f} mm, "
                     f"score {c.score:.2f}" + (", forearm cut at the border" if c.cut is not None else "")
                     + f": {why}")
    cut = segmentation.cut
    if cut is not None:
        u, v = cut.point_uv
        du, dv = cut.direction_uv
        f_px = 0.5 * cut.forearm_width_px  # the line spans the forearm's width
        H, W = d.shape
        a = (int(round(v - du * f_px)), int(round(u + dv * f_px)))
        b = (int(round(v + du * f_px)), int(round(u - dv * f_px)))
        rr, cc = line(*a, *b)
        ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        img[rr[ok], cc[ok]] = (0, 80, 255)
    text = "\n".join(lines) + "\n"
    path = Path(path)
    try:
        iio.imwrite(path, img)
        path.with_suffix(".txt").write_text(text)
    except OSError as err:
        raise InputError(f"cannot write the segmentation picture {path}: {err.strerror or err}") from None
    return text


def colours_name(kind: str) -> str:
    """The colour a candidate of this kind has in :func:`write_segmentation_debug`."""
    return {"hand": "green (the hand)", "rejected": "red (rejected)", "lost": "orange (lost)"}[kind]


def overlay_image(depth: torch.Tensor | None, silhouette: torch.Tensor, keypoints_uv: torch.Tensor,
                  background: torch.Tensor | None = None) -> np.ndarray:
    """RGB (H, W, 3) uint8: depth in grey, the rendered silhouette in green, keypoints in red.

    Args:
        depth: (H, W) mm, 0 = no measurement (shown black); nearer is brighter. None: a view
            without depth, drawn over ``background``.
        silhouette: (H, W) in [0, 1], the rendered hand in the same image.
        keypoints_uv: (21, 2) pixel coordinates (OpenCV convention).
        background: (3, H, W) in [0, 1], drawn instead of the depth (an RGB image, or a mask
            in grey); None with ``depth`` None: black.
    """
    if depth is not None:
        d = depth.detach().cpu().numpy()
        valid = d > 0
        grey = np.zeros_like(d)
        if valid.any():
            near, far = np.percentile(d[valid], [1, 99])
            grey[valid] = 1.0 - np.clip((d[valid] - near) / max(far - near, 1e-6), 0, 1) * 0.8
        rgb = np.repeat(grey[..., None], 3, axis=2)
    elif background is not None:
        rgb = background.detach().cpu().float().permute(1, 2, 0).numpy()
    else:
        rgb = np.zeros((*silhouette.shape, 3), dtype=np.float32)
    s = silhouette.detach().cpu().numpy()[..., None]
    rgb = rgb * (1 - 0.5 * s) + 0.5 * s * np.array([0.1, 1.0, 0.2])
    img = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    H, W = silhouette.shape
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


def check_output_dir(out_dir: str | Path, what: str = "--out", results: bool = True) -> Path:
    """Make sure ``out_dir`` can take results, before any work: create it and write a probe file.

    Args:
        out_dir: the folder.
        what: how the message names it (a flag or an argument).
        results: the folder will be a result folder (:func:`write_result`): it must be new,
            empty or an earlier result folder (it is then replaced whole), never a folder of
            other files (it would be replaced).

    Returns:
        the folder as a :class:`Path`.

    Raises:
        InputError: it is a file, cannot be created or written (the message names the reason),
            or it holds other files than a result's.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{what} {out} exists and is not a folder")
    if results and out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in RESULT_FILES and not p.name.startswith(".")
                        and not (p.name.startswith("overlay_") and p.suffix == ".png"))  # a rig's overlays
        if others:
            raise InputError(f"{what} {out} holds files that are not a handfit result ({', '.join(others[:3])}"
                             f"{', ...' if len(others) > 3 else ''}); a result folder is replaced whole, so "
                             "choose a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise InputError(f"{what} {out} cannot be written: {err.strerror or err}") from None
    return out


def write_result(result, out_dir: str | Path, renderer=None, files: tuple[str, ...] | None = None
                 ) -> dict[str, Path]:
    """Write one frame's fit (a :class:`fitting.FitResult`) into the folder ``out_dir``, whole.

    The files are written into ``.<name>.tmp`` beside ``out_dir`` and the folder is renamed into
    place; an earlier folder there is moved aside first and removed after (a kill between
    the two renames leaves the earlier folder as ``.<name>.old``, never a mix of two fits).

    Files: ``params.json`` (parameters, metrics, keypoints with their names, camera),
    ``result.npz`` (vertices, faces, keypoints, parameters; mm, input camera coordinates),
    ``mesh.obj`` (mm, input camera coordinates), ``overlay.png`` (the rendered silhouette and
    keypoints over the full depth frame, or over the RGB image or the mask of a view without
    depth) and ``energy.csv`` (one row per iteration). A multi-view result
    (:class:`fitting.MultiViewObservation`) is in the rig's world frame: ``params.json``
    holds the ``rig`` instead of the ``camera``, and ``overlay.png`` becomes one
    ``overlay_<view>.png`` per view.

    Args:
        result: the fit, with its ``observation`` (the full input frame and its camera).
        out_dir: the folder (created; its parents too).
        renderer: renders the overlay's silhouette at the frame's resolution (default: the
            soft rasterizer).
        files: which of the files to write (None: all; ``params.json`` always).

    Returns:
        file name -> path (in ``out_dir``), of the files written.

    Raises:
        ValueError: the result has no observation, or ``files`` names an unknown file.
        OSError: the folder cannot be written (check it first with :func:`check_output_dir`).
    """
    if result.observation is None:
        raise ValueError(f"{result.name}: the result has no observation (its depth frame and camera are "
                         "needed for the overlay)")
    files = ("params.json", *(f for f in (files or RESULT_FILES) if f != "params.json"))
    unknown = set(files) - set(RESULT_FILES)
    if unknown:
        raise ValueError(f"unknown result files {sorted(unknown)}; known: {', '.join(RESULT_FILES)}")
    final = Path(out_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _write_files(result, tmp, renderer, files)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    written = {name: final / name for name in files if name != "overlay.png"}
    if "overlay.png" in files:
        written.update({name: final / name for name, *_ in overlay_views(result)})
    return written


def _write_files(result, out: Path, renderer, files: tuple[str, ...]) -> None:
    """The ``files`` of :func:`write_result`, written into the (temporary) folder ``out``."""
    params = {k: v.tolist() for k, v in result.params.items() if k != "offsets"}
    rig = getattr(result.observation, "rig", None)
    doc = {
        "name": result.name,
        "units": ("millimetres, radians; camera coordinates of the input frame (OpenCV axes)" if rig is None else
                  "millimetres, radians; the rig's world frame (x_cam = R x_world + t in each view, OpenCV axes)"),
        "metrics": result.metrics,
        "keypoint_names": list(KEYPOINT_NAMES),
        "keypoints": result.keypoints.tolist(),
        "params": params,
    }
    if rig is None:
        doc["camera"] = camera_to_dict(result.observation.camera)
    else:
        doc["rig"] = rig.to_dict()
    (out / "params.json").write_bytes(json.dumps(doc, indent=1).encode())
    if "result.npz" in files:
        _write_arrays(result, out / "result.npz")
    if "mesh.obj" in files:
        mesh = trimesh.Trimesh(result.vertices.numpy(), result.faces.numpy(), process=False)
        (out / "mesh.obj").write_bytes(mesh.export(file_type="obj").encode())
    if "overlay.png" in files:
        _write_overlay(result, out / "overlay.png", renderer)  # or overlay_<view>.png per rig view
    if "energy.csv" in files:
        _write_energy(result, out / "energy.csv")


def _write_arrays(result, path: Path) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, vertices=result.vertices.numpy(), faces=result.faces.numpy(),
                        keypoints=result.keypoints.numpy(),
                        **{k: v.numpy() for k, v in result.params.items()})
    path.write_bytes(buf.getvalue())


def overlay_views(result) -> list:
    """``(file name, view Observation, R (3, 3), t (3,))`` of each overlay of a result: one
    ``overlay.png`` in the frame's camera, or one ``overlay_<view>.png`` per rig view."""
    obs = result.observation
    rig = getattr(obs, "rig", None)
    if rig is None:
        return [("overlay.png", obs, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))]
    return [(f"overlay_{n}.png", o, rig.rotation[v], rig.translation[v])
            for v, (n, o) in enumerate(zip(rig.names, obs.views))]


def _write_overlay(result, path: Path, renderer) -> None:
    renderer = renderer or make_renderer("soft")
    for name, obs, R, t in overlay_views(result):
        camera = obs.camera
        R, t = R.to(camera.dtype), t.to(camera.dtype)
        vertices = result.vertices[None].to(camera.dtype) @ R.T + t
        with torch.no_grad():
            render = renderer(vertices, result.faces, camera)
        uv = camera.project(result.keypoints[None].to(camera.dtype) @ R.T + t)[0]
        background = obs.rgb if obs.rgb is not None else (
            None if obs.mask is None else obs.mask.float()[None].expand(3, -1, -1) * 0.6)
        img = overlay_image(obs.depth, render.silhouette[0], uv, background)
        path.with_name(name).write_bytes(iio.imwrite("<bytes>", img, extension=".png"))


def _write_energy(result, path: Path) -> None:
    terms = sorted({k for h in result.history for k in h} - {"stage", "iteration", "active"})
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["step", "stage", "iteration", *terms])
    for step, h in enumerate(result.history):
        writer.writerow([step, h["stage"], h["iteration"], *[f"{h.get(k, float('nan')):.6g}" for k in terms]])
    path.write_bytes(text.getvalue().encode())
