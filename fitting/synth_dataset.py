"""A synthetic training set in the SynHand5M layout (DeepHPS supplementary, seed 000, Sec. 2).

:func:`generate` renders random hands of any :class:`hands.HandModel` into chunks::

    OUT/camera.json                 intrinsics (fx, fy, cx, cy, width, height, K) and extrinsics
                                    (world -> camera 4x4; the identity: the world is the camera frame)
    OUT/chunk_0000/dataframe.csv    one row per sample (columns: :func:`dataframe_columns`)
    OUT/chunk_0000/depth/000000.png       16-bit depth, millimetres (0 = no measurement)
    OUT/chunk_0000/vertices/000000.bin    the posed vertices, float32 x, y, z (mm, camera frame)
    OUT/chunk_0000/segmentation/000000.png  RGB, the palm and each phalanx in its colour
                                    (:data:`PART_COLOURS`; black = not hand)

The dataframe holds what regenerates a sample: the root (wrist keypoint) position, the root
rotation as XYZ Euler angles and as a quaternion (w, x, y, z), the shape coefficients, the
bone-length scales, the articulation angles (one per DoF, radians), each joint's rotation
relative to its parent (XYZ Euler angles, radians) and the 21 keypoints (mm).

Sampling (as the seed describes SynHand5M, with our model's ranges):

- pose: a pose class (open, spread, fist, pinch, point, free) sets a curl per finger, which
  drives its flexion DoFs together (the distal joints follow the proximal ones), and a
  spread for the abductions; all within the model's joint limits. Samples whose fingers
  interpenetrate (a sphere overlap of :class:`hands.CollisionProxies` above
  ``max_penetration_mm``) are drawn again.
- shape: coefficients uniform over [-2, 2] (the fitter's range), bone scales uniform over
  [0.9, 1.1] (``SynthOptions`` fields; :data:`SHIFTED` widens them for a domain-shifted set).
- viewpoint: from the default view (palm towards the camera, fingers up), a roll about the
  fingers' axis, a flexion about the palm's transverse axis and a rotation about the palm
  normal (in-plane), at 250-650 mm, the hand's centre inside the middle of the image.
- sensor (switchable): noise growing with depth (``0.5 mm + 2.5e-6 z^2``: 1.1 mm at 500 mm),
  missing pixels at depth edges, 1 mm quantization (the PNG), an optional forearm and a
  background plane.

Every sample is drawn from its own generator seeded by ``(seed, chunk, index)``, so a chunk is
the same whatever was generated before it; each chunk is written into a temporary folder
and renamed when complete, so a rerun skips finished chunks (resumable per chunk).
:class:`SynthDataset` reads a dataset back as tensors, cropped and normalized as an
initializer network takes them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from pytorch3d.transforms import (axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_euler_angles,
                                  matrix_to_quaternion, quaternion_to_axis_angle)
from tqdm import tqdm

from hands import KEYPOINT_NAMES, CollisionProxies, HandModel
from losses import nearest_vertex, sphere_overlap_stats
from renderers import Camera, make_renderer

from .errors import InputError
from .io import camera_from_args, read_depth

__all__ = ["SynthOptions", "generate", "dataframe_columns", "read_chunk", "SynthDataset", "part_labels",
           "PART_COLOURS", "POSE_CLASSES", "normalize_depth", "SHIFTED", "SYNTH_CROPS"]

#: Poses classes and their share of the samples.
POSE_CLASSES = {"open": 0.15, "spread": 0.15, "fist": 0.15, "pinch": 0.2, "point": 0.1, "free": 0.25}
#: The segmentation colours: index 0 the palm, then the phalanges in the model's joint order.
PART_COLOURS = np.array([
    (200, 200, 200), (230, 25, 75), (245, 130, 48), (255, 225, 25), (60, 180, 75), (70, 240, 240),
    (0, 130, 200), (145, 30, 180), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (128, 0, 0), (128, 128, 0), (0, 0, 128), (255, 215, 180),
], dtype=np.uint8)
CAMERA_FILE = "camera.json"
#: A domain-shifted test set's sampling (``SynthOptions(**SHIFTED)``, ``handfit synth --shifted``):
#: shapes and bone scales beyond the default ranges, the heavy noise model, stronger rolls and
#: flexions (side views, 103 instead of 80 degrees of roll at most) and a farther hand.
SHIFTED = {"shape_range": 3.0, "bone_scale_range": (0.8, 1.2), "roll_max": 1.8, "flex_max": 1.0,
           "depth_range_mm": (350.0, 750.0), "noise_model": "heavy"}
DATAFRAME = "dataframe.csv"


@dataclasses.dataclass
class SynthOptions:
    """Settings of :func:`generate`.

    Attributes:
        samples: samples in all; chunk_size: samples per chunk (SynHand5M: 100,000).
        chunk_size: see ``samples``.
        seed: the dataset's seed.
        width, height, fx, fy: the camera (principal point at the image centre).
        fy: see ``width``.
        noise: the depth-dependent noise, edge dropout and quantization on (False: exact
            depth, still rounded to whole mm by the PNG).
        forearm: add a forearm (a cylinder from the wrist, 25 mm radius, 250 mm long).
        background_mm: depth of a slanted background plane, None for none.
        max_penetration_mm: largest allowed sphere overlap between the fingers.
        progress: tqdm progress bar.
        shape_range: the shape coefficients are uniform over +- this.
        bone_scale_range: the bone-length scales are uniform over (low, high).
        roll_max: the viewpoint's roll about the fingers' axis is uniform over +- this (rad).
        flex_max: its flexion about the palm's transverse axis, likewise (rad).
        depth_range_mm: the hand's distance from the camera is uniform over (near, far), mm.
        noise_model: ``"quadratic"`` (the default sensor above) or ``"heavy"``: noise
            ``1 mm + 6e-6 z^2`` (2.5 mm at 500 mm), 80 % of the edge pixels missing and 2 % of
            the hand's pixels dropped at random (specular holes). :data:`SHIFTED` sets these
            fields for a domain-shifted test set.

    Raises:
        ValueError: a value out of range.
    """

    samples: int = 1000
    chunk_size: int = 1000
    seed: int = 0
    width: int = 640
    height: int = 480
    fx: float = 476.0
    fy: float = 476.0
    noise: bool = True
    forearm: bool = False
    background_mm: float | None = 1000.0
    max_penetration_mm: float = 2.0
    progress: bool = True
    shape_range: float = 2.0
    bone_scale_range: tuple[float, float] = (0.9, 1.1)
    roll_max: float = 1.4
    flex_max: float = 0.8
    depth_range_mm: tuple[float, float] = (250.0, 650.0)
    noise_model: str = "quadratic"

    def __post_init__(self):
        if self.samples < 1 or self.chunk_size < 1:
            raise ValueError(f"samples and chunk_size must be >= 1, got {self.samples} and {self.chunk_size}")
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f"width and height must be 16..4096 px, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"fx and fy must be > 0, got {self.fx}, {self.fy}")
        if self.noise_model not in ("quadratic", "heavy"):
            raise ValueError(f"noise_model must be 'quadratic' or 'heavy', got {self.noise_model!r}")
        lo, hi = self.bone_scale_range
        near, far = self.depth_range_mm
        if not (0 < lo <= hi and 0 < near <= far and self.shape_range >= 0):
            raise ValueError(f"bad sampling ranges: bone scales {self.bone_scale_range}, depth "
                             f"{self.depth_range_mm} mm, shape +-{self.shape_range}")

    def sampling(self) -> dict:
        """The sampling fields that differ from the defaults (recorded in ``camera.json``)."""
        names = ("shape_range", "bone_scale_range", "roll_max", "flex_max", "depth_range_mm", "noise_model")
        default = SynthOptions()
        return {k: (list(v) if isinstance(v, tuple) else v) for k in names
                if (v := getattr(self, k)) != getattr(default, k)}

    def camera(self) -> Camera:
        return Camera(fx=self.fx, fy=self.fy, cx=(self.width - 1) / 2, cy=(self.height - 1) / 2,
                      width=self.width, height=self.height)


def part_labels(model: HandModel) -> torch.Tensor:
    """(V,) long: each vertex's part, 0 for the palm (root, wrist, metacarpals), 1.. for the
    phalanges (the joints named ``finger*``, in joint order), by its largest skinning weight."""
    data = model.data
    dominant = data.skin_indices.gather(1, data.skin_weights.argmax(1, keepdim=True))[:, 0]
    phalanges = [j for j, n in enumerate(data.joint_names) if n.startswith("finger")]
    table = torch.zeros(len(data.joint_names), dtype=torch.long)
    for i, j in enumerate(phalanges):
        table[j] = i + 1
    return table[dominant.cpu()]


def dataframe_columns(model: HandModel) -> list[str]:
    """The dataframe's columns for ``model``."""
    cols = ["sample", "pose_class", "root_x", "root_y", "root_z", "root_euler_x", "root_euler_y", "root_euler_z",
            "root_quat_w", "root_quat_x", "root_quat_y", "root_quat_z", "transl_x", "transl_y", "transl_z"]
    cols += [f"shape_{n}" for n in model.data.shape_names]
    cols += [f"bone_scale_{i}" for i in range(model.neutral_parameters(1)["alpha"].shape[1])]
    cols += [f"theta_{n}" for n in model.data.dof_names]
    for n in model.data.joint_names[1:]:
        cols += [f"rot_{n}_{a}" for a in "xyz"]
    for n in KEYPOINT_NAMES:
        cols += [f"kp_{n}_{a}" for a in "xyz"]
    return cols


# -- sampling --------------------------------------------------------------------------------
def _uniform(g: torch.Generator, lo: float, hi: float, *shape) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape or (1,), generator=g)


def _sample_pose(model: HandModel, g: torch.Generator) -> tuple[str, torch.Tensor]:
    """A pose class and its articulation (D,) rad within the limits."""
    names = list(POSE_CLASSES)
    k = int(torch.multinomial(torch.tensor(list(POSE_CLASSES.values())), 1, generator=g))
    cls = names[k]
    u = lambda lo, hi: float(_uniform(g, lo, hi))  # noqa: E731
    fingers = ("thumb", "index", "middle", "ring", "little")
    curl = {f: u(0.0, 1.0) for f in fingers}
    spread = u(0.0, 0.6)
    if cls == "open":
        curl = {f: u(0.0, 0.15) for f in fingers}
    elif cls == "spread":
        curl, spread = {f: u(0.0, 0.1) for f in fingers}, u(0.7, 1.0)
    elif cls == "fist":
        curl, spread = {f: u(0.75, 1.0) for f in fingers}, u(0.0, 0.2)
        curl["thumb"] = u(0.3, 0.8)
    elif cls == "pinch":
        curl.update(thumb=u(0.35, 0.75), index=u(0.35, 0.7))
    elif cls == "point":
        curl = {f: u(0.7, 1.0) for f in fingers}
        curl["index"], spread = u(0.0, 0.1), u(0.0, 0.3)
    lower, upper = model.dof_lower.cpu(), model.dof_upper.cpu()
    theta = torch.zeros(model.num_dofs)
    for d, name in enumerate(model.data.dof_names):
        finger = name.split("_")[0]
        if name.endswith("_abd"):
            side = u(-1.0, 1.0)
            theta[d] = spread * (upper[d] if side > 0 else lower[d]) * abs(side)
        else:  # flexion: the finger's curl, each joint jittered, distal joints a little less
            theta[d] = curl[finger] * upper[d] * u(0.8, 1.0) + u(-0.05, 0.05)
    return cls, torch.maximum(torch.minimum(theta, upper), lower)


def _sample_view(g: torch.Generator, camera: Camera, options: "SynthOptions") -> tuple[torch.Tensor, torch.Tensor]:
    """global_orient (3,) axis-angle and transl (3,) mm of a SynHand5M-like viewpoint."""
    roll = axis_angle_to_matrix(torch.tensor([0.0, 1.0, 0.0]) * _uniform(g, -options.roll_max, options.roll_max))
    flex = axis_angle_to_matrix(torch.tensor([1.0, 0.0, 0.0]) * _uniform(g, -options.flex_max, options.flex_max))
    spin = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.0]) * _uniform(g, -math.pi, math.pi))  # in-plane
    R = spin @ flex @ roll
    z = float(_uniform(g, *options.depth_range_mm))
    u, v = float(_uniform(g, 0.3, 0.7)) * camera.width, float(_uniform(g, 0.3, 0.7)) * camera.height
    x = (u - float(camera.cx[0])) / float(camera.fx[0]) * z
    y = (v - float(camera.cy[0])) / float(camera.fy[0]) * z
    return matrix_to_axis_angle(R), torch.tensor([x, y, z])


def _sample(model: HandModel, proxies: CollisionProxies, camera: Camera, g: torch.Generator,
            options: "SynthOptions") -> tuple[str, dict]:
    """A pose class and (1, ...) parameters without finger interpenetration (up to 50 draws)."""
    for _ in range(50):
        cls, theta = _sample_pose(model, g)
        p = model.neutral_parameters(1)
        p["theta"] = theta[None].to(p["theta"])
        p["beta"] = _uniform(g, -options.shape_range, options.shape_range, model.num_shapes)[None].to(p["beta"])
        p["alpha"] = _uniform(g, *options.bone_scale_range, p["alpha"].shape[1])[None].to(p["alpha"])
        orient, transl = _sample_view(g, camera, options)
        p["global_orient"], p["transl"] = orient[None].to(p["transl"]), transl[None].to(p["transl"])
        with torch.no_grad():
            largest, _ = sphere_overlap_stats(proxies.centers(model(**p)), proxies.radii, proxies.allowed)
        if float(largest[0]) <= options.max_penetration_mm:
            return cls, p
    raise RuntimeError("no interpenetration-free pose in 50 draws; raise max_penetration_mm")


# -- rendering -------------------------------------------------------------------------------
def _cylinder(start: torch.Tensor, direction: torch.Tensor, radius: float, length: float, n: int = 24):
    """A closed-side cylinder mesh (vertices (2n, 3), faces (2n, 3)) along ``direction``."""
    d = direction / direction.norm()
    a = torch.linalg.cross(d, torch.tensor([1.0, 0.0, 0.0]))
    if a.norm() < 1e-3:
        a = torch.linalg.cross(d, torch.tensor([0.0, 1.0, 0.0]))
    a = a / a.norm()
    b = torch.linalg.cross(d, a)
    ang = torch.arange(n) * (2 * math.pi / n)
    ring = radius * (torch.cos(ang)[:, None] * a + torch.sin(ang)[:, None] * b)
    verts = torch.cat([start + ring, start + length * d + ring])
    i = torch.arange(n)
    j = (i + 1) % n
    faces = torch.cat([torch.stack([i, j, i + n], 1), torch.stack([j, j + n, i + n], 1)])
    return verts, faces


def render_sample(model: HandModel, params: dict, camera: Camera, options: SynthOptions, g: torch.Generator,
                  labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor, object]:
    """(depth uint16 (H, W) mm, segmentation uint8 (H, W, 3), vertices (V, 3) mm, hand output)."""
    renderer = make_renderer("hybrid")  # exact hard depth (PyTorch3D's rasterizer)
    with torch.no_grad():
        out = model(**params)
        verts = out.vertices[0]
        hand = renderer(out.vertices, model.faces, camera)
        hand_z = torch.where(hand.mask[0], hand.depth[0], torch.full_like(hand.depth[0], math.inf))
        scene_z = hand_z
        if options.forearm:
            wrist = out.keypoints[0, 0]
            towards_elbow = out.transforms[0, 0, :3, 1]  # the model's +y: from the fingers to the wrist
            fv, ff = _cylinder(wrist + 5.0 * towards_elbow, towards_elbow, 25.0, 250.0)
            arm = renderer(fv[None], ff, camera)
            scene_z = torch.minimum(scene_z, torch.where(arm.mask[0], arm.depth[0], torch.full_like(scene_z, math.inf)))
        H, W = scene_z.shape
        if options.background_mm is not None:
            v, u = torch.meshgrid(torch.arange(H, dtype=scene_z.dtype), torch.arange(W, dtype=scene_z.dtype),
                                  indexing="ij")
            wall = options.background_mm + 0.2 * (u - W / 2) + 0.1 * (v - H / 2)
            scene_z = torch.minimum(scene_z, wall)
        visible = hand.mask[0] & (hand_z <= scene_z + 1e-3)
        depth = torch.where(torch.isfinite(scene_z), scene_z, torch.zeros_like(scene_z))
        heavy = options.noise_model == "heavy"
        if options.noise:
            sigma = (1.0 + 6e-6 * depth ** 2) if heavy else (0.5 + 2.5e-6 * depth ** 2)
            depth = torch.where(depth > 0, depth + sigma * torch.randn(depth.shape, generator=g), depth)
            # missing pixels where the depth jumps (the sensor's flying-pixel filter)
            pad = torch.nn.functional.pad(depth[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
            jump = torch.zeros_like(depth, dtype=torch.bool)
            for dv, du in ((0, 1), (2, 1), (1, 0), (1, 2)):
                jump |= (pad[dv:dv + H, du:du + W] - depth).abs() > 20.0
            drop = jump & (torch.rand(depth.shape, generator=g) < (0.8 if heavy else 0.5))
            if heavy:  # specular holes on the hand
                drop |= visible & (torch.rand(depth.shape, generator=g) < 0.02)
            depth = torch.where(drop, torch.zeros_like(depth), depth)
        depth_png = depth.round().clamp(0, 65535).numpy().astype(np.uint16)
        # segmentation: each visible hand pixel takes the part of the vertex nearest its surface point
        seg = np.zeros((H, W, 3), np.uint8)
        ys, xs = visible.nonzero(as_tuple=True)
        if ys.numel():
            uv = torch.stack([xs, ys], -1).to(verts.dtype)
            points = camera.unproject(uv[None], hand_z[ys, xs][None])
            idx = nearest_vertex(points, verts[None])[0]
            seg[ys.numpy(), xs.numpy()] = PART_COLOURS[labels[idx].numpy()]
    return depth_png, seg, verts, out


def _row(model: HandModel, sample: int, cls: str, params: dict, out) -> list:
    R = axis_angle_to_matrix(params["global_orient"][0])
    row = [sample, cls, *out.keypoints[0, 0].tolist(), *matrix_to_euler_angles(R, "XYZ").tolist(),
           *matrix_to_quaternion(R).tolist(), *params["transl"][0].tolist(), *params["beta"][0].tolist(),
           *params["alpha"][0].tolist(), *params["theta"][0].tolist()]
    T = out.transforms[0, :, :3, :3]
    for j, parent in enumerate(model.data.parents.tolist()):
        if j == 0:
            continue
        rel = T[parent].T @ T[j] if parent >= 0 else T[j]
        row += matrix_to_euler_angles(rel, "XYZ").tolist()
    row += out.keypoints[0].reshape(-1).tolist()
    return row


def generate(model: HandModel, out_dir: str | Path, options: SynthOptions | None = None) -> list[Path]:
    """Write the dataset (see the module docstring); finished chunks are kept (resumable).

    Args:
        model: any :class:`hands.HandModel` (CPU).
        out_dir: the dataset folder (created).
        options: :class:`SynthOptions`.

    Returns:
        the chunk folders, in order.

    Raises:
        InputError: ``out_dir`` holds a dataset of other settings (its ``camera.json``
            differs) or cannot be written.
    """
    from .writers import check_output_dir

    options = options or SynthOptions()
    out = check_output_dir(out_dir, "the dataset folder", results=False)
    camera = options.camera()
    cam_doc = {"fx": options.fx, "fy": options.fy, "cx": float(camera.cx[0]), "cy": float(camera.cy[0]),
               "width": options.width, "height": options.height,
               "K": [[options.fx, 0.0, float(camera.cx[0])], [0.0, options.fy, float(camera.cy[0])], [0, 0, 1]],
               "extrinsics": np.eye(4).tolist(), "depth_unit_mm": 1.0, "model": model.data.source,
               "num_vertices": model.num_vertices, "seed": options.seed, "chunk_size": options.chunk_size}
    if options.sampling():
        cam_doc["sampling"] = options.sampling()
    cam_path = out / CAMERA_FILE
    if cam_path.exists():
        try:
            old = json.loads(cam_path.read_text())
        except (OSError, ValueError):
            old = None
        if old != json.loads(json.dumps(cam_doc)):
            raise InputError(f"{out} holds a dataset made with other settings ({CAMERA_FILE} differs); "
                             "choose a new folder")
    else:
        cam_path.write_text(json.dumps(cam_doc, indent=1))
    model = model.to("cpu", torch.float32)
    proxies = CollisionProxies(model)
    labels = part_labels(model)
    columns = dataframe_columns(model)
    n_chunks = math.ceil(options.samples / options.chunk_size)
    chunks = [out / f"chunk_{c:04d}" for c in range(n_chunks)]
    bar = tqdm(total=options.samples, desc="synth", unit="sample", disable=not options.progress)
    for c, chunk in enumerate(chunks):
        count = min(options.chunk_size, options.samples - c * options.chunk_size)
        if (chunk / DATAFRAME).is_file():
            bar.update(count)
            continue
        tmp = chunk.with_name(f".{chunk.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for sub in ("depth", "vertices", "segmentation"):
            (tmp / sub).mkdir(parents=True)
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(columns)
        for i in range(count):
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([options.seed, c, i]).generate_state(1)[0]))
            cls, params = _sample(model, proxies, camera, g, options)
            depth, seg, verts, hand = render_sample(model, params, camera, options, g, labels)
            name = f"{i:06d}"
            iio.imwrite(tmp / "depth" / f"{name}.png", depth)
            iio.imwrite(tmp / "segmentation" / f"{name}.png", seg)
            (tmp / "vertices" / f"{name}.bin").write_bytes(verts.numpy().astype("<f4").tobytes())
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in _row(model, i, cls, params, hand)])
            bar.update(1)
        (tmp / DATAFRAME).write_text(text.getvalue())
        os.replace(tmp, chunk)
    bar.close()
    return chunks


# -- reading back ----------------------------------------------------------------------------
def read_chunk(chunk: str | Path, model: HandModel) -> list[dict]:
    """The samples of a chunk: per row a dict with ``params`` (dict of (1, ...) tensors),
    ``keypoints`` (21, 3) mm, ``pose_class`` and the paths ``depth``, ``vertices``,
    ``segmentation``.

    Raises:
        InputError: a missing or malformed dataframe (columns of another model).
    """
    chunk = Path(chunk)
    path = chunk / DATAFRAME
    if not path.is_file():
        raise InputError(f"{chunk}: no {DATAFRAME} (not a finished chunk)")
    columns = dataframe_columns(model)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != columns:
        raise InputError(f"{path}: its columns are not those of this hand model ({model.data.source})")
    samples = []
    n_shape, n_alpha, n_dof = model.num_shapes, model.neutral_parameters(1)["alpha"].shape[1], model.num_dofs
    for number, row in enumerate(rows[1:], 2):
        if len(row) != len(columns):
            raise InputError(f"{path}:{number}: {len(row)} fields, expected {len(columns)}")
        try:
            values = torch.tensor([float(v) for v in row[2:]], dtype=torch.float32)
        except ValueError:
            raise InputError(f"{path}:{number}: a field is not a number") from None
        orient = quaternion_to_axis_angle(values[6:10])  # after the root position and Euler angles
        at = 3 + 3 + 4
        transl = values[at:at + 3]
        at += 3
        beta = values[at:at + n_shape]
        at += n_shape
        alpha = values[at:at + n_alpha]
        at += n_alpha
        theta = values[at:at + n_dof]
        name = f"{int(row[0]):06d}"
        params = model.neutral_parameters(1)
        params.update(global_orient=orient[None], transl=transl[None], beta=beta[None], alpha=alpha[None],
                      theta=theta[None])
        samples.append({"params": params, "keypoints": values[-63:].reshape(21, 3), "pose_class": row[1],
                        "depth": chunk / "depth" / f"{name}.png", "vertices": chunk / "vertices" / f"{name}.bin",
                        "segmentation": chunk / "segmentation" / f"{name}.png"})
    return samples


#: How :class:`SynthDataset` finds the hand in a sample: its segmentation (``"mask"``) or the
#: fitter's depth segmentation (``"fitter"``, :func:`fitting.preprocess.prepare`).
SYNTH_CROPS = ("mask", "fitter")


def normalize_depth(hand_depth: torch.Tensor, centre_z, box_mm: float) -> torch.Tensor:
    """A crop's hand depth as the initializer network takes it (DeepHPS Sec. 6.1).

    Args:
        hand_depth: (..., S, S) mm, 0 where there is no hand or no measurement.
        centre_z: the hand centre's depth, mm (a float or a tensor broadcasting against
            ``hand_depth``).
        box_mm: the crop box's side, mm.

    Returns:
        (..., S, S) ``(z - centre_z) / (box_mm / 2)`` clamped to [-1, 1]; 1 (the far side of
        the box) where ``hand_depth`` is 0.
    """
    norm = ((hand_depth - centre_z) / (box_mm / 2)).clamp(-1, 1)
    return torch.where(hand_depth > 0, norm, torch.ones_like(hand_depth))


class SynthDataset(torch.utils.data.Dataset):
    """A generated dataset as tensors, cropped and normalized for an initializer network.

    Item: ``depth`` (1, S, S) in [-1, 1] (DeepHPS: the crop's depth relative to the hand's
    centre over half the box, clamped; background and missing = 1), ``keypoints`` (21, 3) mm
    relative to the crop centre, ``centre`` (3,) mm, ``params`` (dict of unbatched tensors)
    and ``camera`` (the crop's intrinsics as (4,) fx, fy, cx, cy).

    Args:
        root: the dataset folder; model: the hand model it was made with.
        box_mm, size: the crop (:func:`fitting.preprocess.crop_hand`).
        crop: how the hand is found in the frame. ``"mask"`` (training's): the sample's
            segmentation PNG, the exact visible hand. ``"fitter"``: the depth alone, as the
            fitter's network start and :class:`fitting.adaptation.FrameCrops` cut a real frame
            (:func:`fitting.preprocess.prepare`: depth segmentation, forearm cut, hole filling;
            its centroid as the centre), so that labelled batches mixed into an adaptation are
            preprocessed exactly as the unlabelled frames are. A sample whose depth has no
            findable hand falls back to its mask crop.

    Raises:
        InputError: no finished chunk, or a chunk of another model.
        ValueError: ``crop`` is neither ``"mask"`` nor ``"fitter"``.
    """

    def __init__(self, root: str | Path, model: HandModel, box_mm: float = 220.0, size: int = 96,
                 crop: str = "mask"):
        if crop not in SYNTH_CROPS:
            raise ValueError(f"crop must be one of {SYNTH_CROPS}, got {crop!r}")
        self.root, self.box_mm, self.size, self.crop = Path(root), box_mm, size, crop
        chunks = sorted(p for p in self.root.glob("chunk_*") if (p / DATAFRAME).is_file())
        if not chunks:
            raise InputError(f"{root}: no finished chunk (chunk_*/{DATAFRAME})")
        self.camera = camera_from_args(camera_json=self.root / CAMERA_FILE)
        self.samples = [s for c in chunks for s in read_chunk(c, model)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        from .preprocess import crop_hand

        s = self.samples[i]
        depth = read_depth(s["depth"], depth_scale=1.0)
        crop = None
        if self.crop == "fitter":
            from .observation import Observation
            from .preprocess import prepare

            try:
                crop = prepare(Observation(depth=depth, camera=self.camera), self.box_mm, self.size)
            except InputError:
                crop = None
        if crop is None:
            mask = torch.from_numpy(iio.imread(s["segmentation"]).any(-1))
            crop = crop_hand(depth, mask, self.camera, box_mm=self.box_mm, out_size=self.size)
        centre = crop.centre_mm
        norm = normalize_depth(crop.hand_depth, centre[2], self.box_mm)
        cam = crop.camera
        return {"depth": norm[None], "keypoints": s["keypoints"] - centre, "centre": centre,
                "params": {k: v[0] for k, v in s["params"].items()},
                "camera": torch.stack([cam.fx[0], cam.fy[0], cam.cx[0], cam.cy[0]])}
