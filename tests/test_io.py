import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fitting.errors import InputError
from fitting.io import camera_from_args, check_camera_matches, read_depth, read_keypoints_json, read_mask


def test_uint16_depth_roundtrip_with_scale(tmp_path):
    raw = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000)
    iio.imwrite(tmp_path / "d.png", raw)
    depth = read_depth(tmp_path / "d.png", depth_scale=0.125)
    assert depth.dtype == torch.float32 and depth.shape == (3, 4)
    assert torch.allclose(depth, torch.from_numpy(raw.astype(np.float32) * 0.125))


def test_eight_bit_image_is_rejected(tmp_path):
    iio.imwrite(tmp_path / "d8.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="8-bit"):
        read_depth(tmp_path / "d8.png")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_depth(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read"):
        read_depth(tmp_path / "junk.png")


def test_bad_depth_scale():
    with pytest.raises(InputError, match="depth-scale"):
        read_depth("whatever.png", depth_scale=0.0)


def test_nyu_packing_roundtrip(tmp_path):
    mm = np.array([[0, 255, 256], [700, 1000, 65535 // 2]], dtype=np.int64)
    rgb = np.zeros(mm.shape + (3,), np.uint8)
    rgb[..., 1], rgb[..., 2] = mm >> 8, mm & 255
    iio.imwrite(tmp_path / "nyu.png", rgb)
    depth = read_depth(tmp_path / "nyu.png", encoding="nyu")
    assert torch.equal(depth, torch.from_numpy(mm.astype(np.float32)))


def test_mask_and_keypoints(tmp_path):
    m = np.zeros((5, 6), np.uint8)
    m[1:3, 2:4] = 255
    iio.imwrite(tmp_path / "m.png", m)
    assert int(read_mask(tmp_path / "m.png").sum()) == 4
    (tmp_path / "k.json").write_text(json.dumps({"keypoints": [[1, 2], [3, 4]]}))
    assert read_keypoints_json(tmp_path / "k.json").shape == (2, 2)
    (tmp_path / "bad.json").write_text("[[1, 2, 3, 4]]")
    with pytest.raises(InputError, match="keypoints"):
        read_keypoints_json(tmp_path / "bad.json")


def test_camera_from_flags_and_json(tmp_path):
    cam = camera_from_args(500, 500, 320, 240, 640, 480)
    assert cam.width == 640 and float(cam.fx[0]) == 500
    with pytest.raises(InputError, match="--fy"):
        camera_from_args(500, None, 320, 240, 640, 480)
    path = tmp_path / "cam.json"
    path.write_text(json.dumps({"fx": 400, "fy": 410, "cx": 100, "cy": 80}))
    cam = camera_from_args(camera_json=path, fx=420, width=200, height=160)
    assert float(cam.fx[0]) == 420 and float(cam.fy[0]) == 410 and cam.height == 160


def test_camera_must_match_image():
    cam = camera_from_args(500, 500, 320, 240, 640, 480)
    check_camera_matches(cam, torch.zeros(480, 640))
    with pytest.raises(InputError, match="640x480 image but the depth frame is 320x240"):
        check_camera_matches(cam, torch.zeros(240, 320))
    with pytest.raises(InputError, match="principal point"):
        check_camera_matches(camera_from_args(500, 500, 900, 240, 640, 480), torch.zeros(480, 640))
