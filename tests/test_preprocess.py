"""Hand segmentation and the hand-centred crop (fitting.preprocess)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from fitting.errors import InputError, NoHandFoundError
from fitting.io import read_depth
from fitting.preprocess import HandCrop, check_depth_scale, crop_hand, cut_forearm_mask, segment_hand
from renderers import Camera

#: ``../shared`` beside the repository root (real SR305 frames); optional.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SR305 = dict(fx=476.007, fy=476.007, cx=313.683, cy=242.755, width=640, height=480)
CAM = Camera(**SR305)
H, W = 480, 640


# ----------------------------------------------------------------------------- synthetic scenes
def hand_scene(theta_deg=-90.0, z=450.0, wall=1000.0, R=40.0, centre=(320.0, 240.0), seed=0,
               speckle=True):
    """A hand-like blob facing the camera in front of a wall, with a forearm to the border.

    Palm: a disc of radius R px; four fingers (half-width 6 px) fanned around the direction
    theta (image angle; -90 = fingers up), from 0.6 R to 2.7 R; a thumb at theta + 75 deg; a
    forearm (half-width 0.7 R) from the palm centre in the opposite direction to the frame's
    border, receding 0.3 mm per px. Returns the depth (mm) and a dict of boolean regions and
    probe points (u, v).
    """
    g = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    cu, cv = centre
    du, dv = u - cu, v - cv
    t0 = math.radians(theta_deg)

    def along(angle):
        return du * math.cos(angle) + dv * math.sin(angle), np.abs(-du * math.sin(angle) + dv * math.cos(angle))

    palm = du ** 2 + dv ** 2 <= R ** 2
    fingers = np.zeros_like(palm)
    tips = []
    for phi in (-27.0, -9.0, 9.0, 27.0):
        a = t0 + math.radians(phi)
        t, n = along(a)
        fingers |= (t >= 0.6 * R) & (t <= 2.7 * R) & (n <= 6)
        tips.append((cu + 2.5 * R * math.cos(a), cv + 2.5 * R * math.sin(a)))
    a = t0 + math.radians(75.0)
    t, n = along(a)
    thumb = (t >= 0.5 * R) & (t <= 2.0 * R) & (n <= 8)
    tips.append((cu + 1.8 * R * math.cos(a), cv + 1.8 * R * math.sin(a)))
    t, n = along(t0 + math.pi)
    forearm = (t >= 0) & (n <= 0.7 * R) & ~palm
    hand = palm | fingers | thumb
    forearm &= ~hand
    depth = np.full((H, W), wall)
    depth[hand] = z + 0.05 * np.hypot(du, dv)[hand]
    depth[forearm] = z + 0.3 * t[forearm]
    depth += g.uniform(0.0, 1.0, depth.shape)  # sensor noise, and every value unique
    if speckle:
        depth[g.random(depth.shape) < 0.001] = 300.0  # isolated near pixels
        for _ in range(5):  # small near clusters
            r, c = g.integers(10, H - 10), g.integers(10, W - 10)
            depth[r:r + 3, c:c + 3] = 250.0
    back = t0 + math.pi
    probes = {
        "tips": tips,
        "palm": (cu, cv),
        "forearm_far": (cu + 2.5 * R * math.cos(back), cv + 2.5 * R * math.sin(back)),
        "forearm_near": (cu + 0.5 * R * math.cos(back), cv + 0.5 * R * math.sin(back)),
    }
    regions = {"hand": hand, "forearm": forearm, "palm": palm}
    return torch.from_numpy(depth.astype(np.float32)), regions, probes


def at(mask, uv):
    return bool(mask[int(round(uv[1])), int(round(uv[0]))])


def components(mask):
    return ndimage.label(np.asarray(mask), structure=np.ones((3, 3)))[1]


# ----------------------------------------------------------------------------- segmentation
@pytest.mark.parametrize("theta", [-90.0, 0.0, 90.0, 180.0, 35.0])
def test_segments_the_hand_and_cuts_the_forearm_on_the_right_side(theta):
    depth, regions, probes = hand_scene(theta)
    mask = segment_hand(depth, CAM)
    assert mask.dtype == torch.bool and mask.shape == (H, W)
    m = mask.numpy()
    assert components(m) == 1
    hand = regions["hand"]
    assert (m & hand).sum() / hand.sum() > 0.97  # palm, fingers and thumb
    assert all(at(m, tip) for tip in probes["tips"])
    assert at(m, probes["forearm_near"])  # inside the palm, before the wrist
    assert not at(m, probes["forearm_far"])  # forearm beyond the wrist is cut
    assert (m & regions["forearm"]).sum() < 0.1 * (m & hand).sum()
    # the speckle in front of the scene never enters the mask (except where it lies on the
    # hand: the mask is a silhouette and fills such 1-pixel holes)
    on_hand = ndimage.binary_dilation(hand | regions["forearm"])
    assert not (m & (depth.numpy() < 400) & ~on_hand).any()
    assert not (m & ~on_hand).any()


def test_forearm_is_kept_when_not_cutting():
    depth, regions, probes = hand_scene(-90.0)
    m = segment_hand(depth, CAM, cut_forearm=False).numpy()
    assert at(m, probes["forearm_far"])
    assert all(at(m, tip) for tip in probes["tips"])
    # the forearm recedes 0.3 mm/px, so all of its 240 px to the border are in the band
    assert (m & regions["forearm"]).sum() > 0.95 * regions["forearm"].sum()


def test_cut_forearm_mask_reports_the_directions():
    depth, regions, probes = hand_scene(0.0, speckle=False)  # fingers to the right
    blob = regions["hand"] | regions["forearm"]
    out, info = cut_forearm_mask(blob, depth.numpy(), return_info=True)
    assert info["fingers_dir"][0] > 0.9 and info["forearm_dir"][0] < -0.9
    assert 0.9 * 40 <= info["wrist_px"] <= 1.7 * 40
    assert abs(info["palm_uv"][0] - 320) <= 3 and abs(info["palm_uv"][1] - 240) <= 3
    assert out.sum() < blob.sum() and at(out, probes["palm"])


def test_hand_in_front_of_the_body_is_separated_by_the_depth_jump():
    # the body (a wide surface 110 mm behind the hand) lies inside the 150 mm band
    depth, regions, probes = hand_scene(-90.0, z=480.0, wall=1200.0, speckle=False)
    v, u = np.mgrid[0:H, 0:W]
    body = (abs(u - 330) < 200) & (v > 150) & ~regions["hand"] & ~regions["forearm"]
    d = depth.numpy().copy()
    d[body] = 590.0 + 0.01 * u[body]
    m = segment_hand(torch.from_numpy(d), CAM).numpy()
    assert not (m & body).any()
    assert (m & regions["hand"]).sum() / regions["hand"].sum() > 0.97


def test_curled_finger_in_front_attached_small_dropouts_filled_big_holes_kept():
    depth, regions, probes = hand_scene(-90.0, speckle=False)
    d = depth.numpy().copy()
    v, u = np.mgrid[0:H, 0:W]
    curled = (u - 335) ** 2 + (v - 230) ** 2 <= 9 ** 2  # a fingertip 40 mm in front of the palm
    d[curled] -= 40.0
    ring = (u - 305) ** 2 + (v - 250) ** 2 <= 5 ** 2  # pixels that measured nothing
    d[ring] = 0.0
    hole = (u - 320) ** 2 + (v - 212) ** 2 <= 7 ** 2  # a hole through to the wall (~130 mm^2)
    d[hole] = 1000.0
    m = segment_hand(torch.from_numpy(d), CAM).numpy()
    assert m[curled].all()
    assert m[ring].all()
    assert not m[hole].any()
    assert components(m) == 1


def test_without_camera_a_nominal_focal_length_is_used():
    depth, regions, _ = hand_scene(-90.0)
    with_cam = segment_hand(depth, CAM).numpy()
    without = segment_hand(depth).numpy()
    assert (with_cam ^ without).sum() < 0.02 * with_cam.sum()


def test_nearest_sizeable_blob_wins_over_a_farther_one():
    near, _, _ = hand_scene(-90.0, z=420.0, centre=(200.0, 200.0), speckle=False)
    far, regions, _ = hand_scene(-90.0, z=700.0, centre=(470.0, 200.0), speckle=False)
    d = torch.minimum(near, far)
    m = segment_hand(d, CAM).numpy()
    assert at(m, (200, 200)) and not at(m, (470, 200))


def test_no_valid_depth_and_no_blob():
    with pytest.raises(NoHandFoundError, match="no valid pixel"):
        segment_hand(torch.zeros(H, W), CAM)
    with pytest.raises(NoHandFoundError, match=r"no valid depth between 150 and 1,500 mm"):
        segment_hand(torch.full((H, W), 5000.0), CAM)
    sparse = torch.zeros(H, W)
    sparse[::7, ::7] = 500.0  # only isolated pixels
    with pytest.raises(NoHandFoundError, match="no blob of at least 200 pixels"):
        segment_hand(sparse, CAM)
    small = torch.full((H, W), 0.0)
    small[100:108, 100:108] = 500.0  # 64 px: speckle-sized
    with pytest.raises(NoHandFoundError):
        segment_hand(small, CAM)


def test_absurd_depth_scale_is_reported():
    depth, _, _ = hand_scene()
    with pytest.raises(InputError, match=r"nearest surface is 4,5\d\d m away.*--depth-scale"):
        segment_hand(depth * 10_000, CAM)  # raw values read with a scale 10,000 times too big
    with pytest.raises(InputError, match="depth-scale"):
        segment_hand(depth * 0.001, CAM)
    with pytest.raises(InputError, match="depth-scale"):
        check_depth_scale(torch.full((4, 4), 50_000.0))
    check_depth_scale(depth)  # plausible: no error
    # SR305 raw units (0.125 mm) read as mm: 8x too far, out of the band, with a hint
    with pytest.raises(NoHandFoundError, match=r"no valid depth between.*is --depth-scale right"):
        segment_hand(torch.full((H, W), 4000.0), CAM)


def test_bad_arguments():
    depth, _, _ = hand_scene()
    with pytest.raises(InputError, match="640x480 image but the depth frame is 320x240"):
        segment_hand(depth[:240, :320], CAM)
    with pytest.raises(InputError, match="2-D"):
        segment_hand(depth[None], CAM)
    bad = depth.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match="finite"):
        segment_hand(bad, CAM)
    bad[0, 0] = -1.0
    with pytest.raises(InputError, match="non-negative"):
        segment_hand(bad, CAM)


# ----------------------------------------------------------------------------- crop
def test_crop_pixels_reproject_to_their_source_pixels():
    depth, regions, _ = hand_scene(-60.0, speckle=False)
    mask = torch.from_numpy(regions["hand"])
    crop = crop_hand(depth, mask, CAM, box_mm=200.0, out_size=64)
    assert isinstance(crop, HandCrop)
    assert crop.depth.shape == crop.hand_depth.shape == crop.mask.shape == (64, 64)
    assert crop.camera.width == crop.camera.height == 64 and crop.camera.batch_size == 1
    # every depth value is unique, so an equal value means the very same source pixel
    rows, cols = torch.nonzero(crop.hand_depth > 0, as_tuple=True)
    assert rows.numel() > 500
    uv = torch.stack([cols, rows], -1).float()[None]
    pts = crop.camera.unproject(uv, crop.hand_depth[rows, cols][None])
    back = CAM.project(pts)[0].round().long()
    assert torch.equal(depth[back[:, 1], back[:, 0]], crop.hand_depth[rows, cols])
    assert bool(mask[back[:, 1], back[:, 0]].all())
    # nearest resampling: no blended depth anywhere in the crop
    frame_values = set(depth.flatten().tolist()) | {0.0}
    assert set(crop.depth.flatten().tolist()) <= frame_values
    # hand_depth is the scene depth on the hand and 0 elsewhere
    on = crop.hand_depth > 0
    assert torch.equal(crop.hand_depth[on], crop.depth[on])
    assert (crop.depth[~on] > 0).any()  # the wall is kept in the scene depth


def test_crop_window_and_camera_follow_the_centre():
    depth, regions, _ = hand_scene(-90.0, speckle=False)
    crop = crop_hand(depth, torch.from_numpy(regions["hand"]), CAM, box_mm=200.0, out_size=96)
    x0, y0, size = crop.window
    assert size == pytest.approx(476.007 * 200.0 / float(crop.centre_mm[2]), rel=1e-5)
    ref = CAM.crop(x0, y0, size, 96)
    for k in ("fx", "fy", "cx", "cy"):
        assert float(getattr(crop.camera, k)[0]) == pytest.approx(float(getattr(ref, k)[0]), rel=1e-5)
    centre = crop.camera.project(crop.centre_mm[None, None])[0, 0]
    assert torch.allclose(centre, torch.tensor([47.5, 47.5]), atol=1e-3)
    hand = torch.from_numpy(regions["hand"])
    rows, cols = torch.nonzero(hand, as_tuple=True)
    pts = CAM.unproject(torch.stack([cols, rows], -1).float()[None], depth[rows, cols][None])[0]
    assert torch.allclose(crop.centre_mm, pts.mean(0), atol=0.05)
    assert crop.points_mm.shape[1] == 3 and crop.points_mm.shape[0] == 1500


def test_crop_of_a_disc_has_the_expected_radius():
    v, u = np.mgrid[0:H, 0:W]
    rho, z = 40.0, 500.0
    disc = (u - 300.0) ** 2 + (v - 260.0) ** 2 <= rho ** 2
    depth = torch.from_numpy(np.where(disc, z, 900.0).astype(np.float32))
    crop = crop_hand(depth, torch.from_numpy(disc), CAM, box_mm=150.0, out_size=64)
    s = 64 / (476.007 * 150.0 / z)  # crop px per frame px
    assert float(crop.mask.sum()) == pytest.approx(math.pi * (rho * s) ** 2, rel=0.02)
    assert float((crop.hand_depth > 0).sum()) == pytest.approx(math.pi * (rho * s) ** 2, rel=0.05)
    m = crop.mask
    assert float(m.min()) >= 0 and float(m.max()) <= 1
    assert ((m > 0.05) & (m < 0.95)).any()  # area-weighted outline
    # the disc's radius in crop pixels, from its centre column
    assert float((m[:, 32] > 0.5).sum()) == pytest.approx(2 * rho * s, abs=1.5)


def test_crop_outside_the_frame_reads_zero():
    v, u = np.mgrid[0:H, 0:W]
    corner = (u - 10.0) ** 2 + (v - 12.0) ** 2 <= 30 ** 2
    depth = torch.from_numpy(np.where(corner, 450.0, 800.0).astype(np.float32))
    crop = crop_hand(depth, torch.from_numpy(corner), CAM, box_mm=200.0, out_size=32)
    x0, y0, size = crop.window
    assert x0 < 0 and y0 < 0
    s = size / 32
    outside_cols = (x0 + (torch.arange(32) + 0.5) * s) < 0
    assert outside_cols.any()
    assert (crop.depth[:, outside_cols] == 0).all() and (crop.mask[:, outside_cols] == 0).all()
    assert (crop.depth[-1, -1] > 0)


def test_crop_leaves_speckle_out_of_the_hand_depth():
    depth, regions, _ = hand_scene(-90.0, speckle=False)
    d = depth.clone()
    d[240, 320] = 150.0  # a flying pixel inside the (filled) mask
    crop = crop_hand(d, torch.from_numpy(regions["hand"]), CAM, out_size=64)
    assert float(crop.hand_depth.max()) < 600 and float(crop.hand_depth[crop.hand_depth > 0].min()) > 400
    assert float(crop.points_mm[:, 2].min()) > 400


def test_crop_errors():
    depth, regions, _ = hand_scene(speckle=False)
    mask = torch.from_numpy(regions["hand"])
    with pytest.raises(NoHandFoundError, match="fewer|at least 10"):
        crop_hand(depth, torch.zeros(H, W, dtype=torch.bool), CAM)
    with pytest.raises(InputError, match="mask must be"):
        crop_hand(depth, mask[:100], CAM)
    with pytest.raises(InputError, match="camera"):
        crop_hand(depth[:240, :320], mask[:240, :320], CAM)
    with pytest.raises(InputError, match="box_mm"):
        crop_hand(depth, mask, CAM, box_mm=0.0)
    with pytest.raises(InputError, match="out_size"):
        crop_hand(depth, mask, CAM, out_size=0)


# ----------------------------------------------------------------------------- real frames
def sr305_frames():
    folder = SHARED / "data" / "sr305"
    if not folder.is_dir():
        pytest.skip(f"the SR305 frames are not at {folder} (../shared beside the repository)")
    paths = sorted(folder.glob("*/*.png"))
    assert len(paths) == 19, f"expected the 19 SR305 frames, found {len(paths)}"
    return paths


def test_real_frames_segment_to_one_plausible_hand():
    for path in sr305_frames():
        depth = read_depth(path, depth_scale=0.125)
        mask = segment_hand(depth, CAM)
        m = mask.numpy()
        d = depth.numpy()
        name = f"{path.parent.name}/{path.name}"
        assert components(m) == 1, name
        z = float(np.median(d[m & (d > 0)]))
        assert 300 < z < 700, (name, z)
        area = float((m * (d / 476.007) ** 2).sum())  # mm^2 of surface seen
        assert 8_000 < area < 25_000, (name, area)
        # the forearm is cut: the hand stays within a hand's reach of its centroid
        crop = crop_hand(depth, mask, CAM, box_mm=220.0)
        reach = (crop.points_mm - crop.centre_mm).norm(dim=1)
        assert float(reach.quantile(0.99)) < 115.0, (name, float(reach.quantile(0.99)))
        assert not (m[[0, -1], :].any() or m[:, [0, -1]].any()), name
        # ... while it was there before the cut (it reaches far beyond the hand)
        uncut = segment_hand(depth, CAM, cut_forearm=False).numpy()
        assert (uncut & ~m).sum() > 0.05 * m.sum(), name
