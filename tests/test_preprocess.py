from pathlib import Path

import numpy as np
import pytest
import torch

from fitting.errors import InputError, NoHandFoundError
from fitting.io import read_depth
from fitting.preprocess import crop_hand, segment_hand
from fitting.synthetic import SR305_CAMERA
from renderers import Camera

CAM = Camera(**SR305_CAMERA)


def scene(seed=0):
    """A hand-sized disc with a finger at 450 mm in front of a wall at 1000 mm, with speckle."""
    g = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.arange(480.0), torch.arange(640.0), indexing="ij")
    depth = torch.full((480, 640), 1000.0)
    hand = ((u - 300) ** 2 + (v - 250) ** 2 < 45 ** 2) | ((abs(u - 300) < 8) & (v > 160) & (v < 250))
    depth[hand] = 450.0 + 5 * torch.rand(int(hand.sum()), generator=g)
    speckle = torch.rand(480, 640, generator=g) < 0.001
    depth[speckle] = 300.0  # isolated near pixels must not win
    return depth, hand


def test_segments_the_nearest_blob():
    depth, hand = scene()
    mask = segment_hand(depth, CAM)
    iou = (mask & hand).sum() / (mask | hand).sum()
    assert iou > 0.97


def test_no_valid_depth_and_no_blob():
    with pytest.raises(NoHandFoundError, match="no valid pixel"):
        segment_hand(torch.zeros(480, 640), CAM)
    with pytest.raises(NoHandFoundError, match="no valid depth between"):
        segment_hand(torch.full((480, 640), 5000.0), CAM)
    sparse = torch.zeros(480, 640)
    sparse[::7, ::7] = 500.0  # only isolated pixels
    with pytest.raises(NoHandFoundError):
        segment_hand(sparse, CAM)


def test_absurd_depth_scale_is_reported():
    depth, _ = scene()
    with pytest.raises(InputError, match="depth-scale"):
        segment_hand(depth * 1e6, CAM)


def test_crop_camera_agrees_with_the_resampled_image():
    depth, hand = scene()
    crop = crop_hand(depth, hand, CAM, box_mm=200.0, out_size=64)
    assert crop.depth.shape == (64, 64) and crop.mask.shape == (64, 64)
    # a crop pixel's 3D point reprojects into the frame at a pixel with the same depth
    rows, cols = torch.nonzero(crop.hand_depth > 0, as_tuple=True)
    uv = torch.stack([cols, rows], -1).float()[None]
    pts = crop.camera.unproject(uv, crop.hand_depth[rows, cols][None])
    back = CAM.project(pts)[0].round().long()
    assert torch.equal(depth[back[:, 1], back[:, 0]], crop.hand_depth[rows, cols])
    # the disc (radius 45 px at 450 mm) keeps its size in crop pixels
    s = 64 / (float(CAM.fx[0]) * 200.0 / float(crop.centre_mm[2]))
    area = float(crop.mask.sum())
    assert area == pytest.approx(np.pi * (45 * s) ** 2 + 16 * 90 * s * s, rel=0.15)
    assert crop.points_mm.shape[1] == 3 and abs(float(crop.centre_mm[2]) - 452.5) < 3


def test_real_frames_segment_to_one_plausible_hand(shared_dir):
    from scipy import ndimage

    paths = sorted((shared_dir / "data" / "sr305").glob("*/*.png"))
    assert len(paths) == 19
    for path in paths:
        depth = read_depth(path, depth_scale=0.125)
        mask = segment_hand(depth, CAM).numpy()
        _, count = ndimage.label(mask, structure=np.ones((3, 3)))
        z = float(depth[torch.from_numpy(mask)].median())
        area = float((mask * (depth.numpy() / 476.007) ** 2).sum())
        assert count == 1, path
        assert 300 < z < 700, (path, z)
        assert 5000 < area < 45000, (path, area)
