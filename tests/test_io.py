"""Readers (fitting.io), the Observation's validation and the error types."""

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fitting.errors import InputError, NoHandFoundError
from fitting.io import (camera_from_args, camera_to_dict, check_camera_matches, read_depth, read_keypoints_json,
                        read_mask)
from fitting.observation import Observation
from renderers import Camera

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def test_error_types():
    assert issubclass(InputError, ValueError)
    assert issubclass(NoHandFoundError, InputError)


# ----------------------------------------------------------------------------- depth
def test_uint16_depth_roundtrip_with_scale(tmp_path):
    raw = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    iio.imwrite(tmp_path / "d.png", raw)
    depth = read_depth(tmp_path / "d.png", depth_scale=0.125)
    assert depth.dtype == torch.float32 and depth.shape == (3, 4)
    assert torch.equal(depth, torch.from_numpy(raw.astype(np.float32) * 0.125))
    assert torch.equal(read_depth(tmp_path / "d.png"), torch.from_numpy(raw.astype(np.float32)))
    assert float(depth[0, 0]) == 0.0  # no measurement stays 0


def test_eight_bit_images_are_rejected(tmp_path):
    iio.imwrite(tmp_path / "d8.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match=r"d8.png: is an 8-bit image; expected 16-bit depth"):
        read_depth(tmp_path / "d8.png")
    iio.imwrite(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match=r"8-bit RGB image; expected 16-bit depth.*--encoding nyu"):
        read_depth(tmp_path / "rgb.png")


def test_multichannel_and_float_images_are_rejected(tmp_path):
    # TIFF (through tifffile, a scikit-image dependency): Pillow cannot write 16-bit RGB PNGs
    iio.imwrite(tmp_path / "rgb16.tif", np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(InputError, match="3 channels; expected single-channel"):
        read_depth(tmp_path / "rgb16.tif")
    iio.imwrite(tmp_path / "float.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match="float32 values; expected 16-bit integer depth"):
        read_depth(tmp_path / "float.tif")
    iio.imwrite(tmp_path / "d16.tif", np.full((4, 4), 4000, np.uint16))
    assert float(read_depth(tmp_path / "d16.tif", 0.125)[0, 0]) == 500.0


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputError, match=r"missing.png: no such file"):
        read_depth(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"junk.png: cannot read the image"):
        read_depth(tmp_path / "junk.png")
    with pytest.raises(InputError, match="is not a file"):
        read_depth(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        read_mask(tmp_path / "missing.png")


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), "0.125", True])
def test_bad_depth_scale(tmp_path, scale):
    with pytest.raises(InputError, match="--depth-scale must be a positive number"):
        read_depth(tmp_path / "whatever.png", depth_scale=scale)


def test_unknown_encoding(tmp_path):
    with pytest.raises(InputError, match="unknown depth encoding 'exr'"):
        read_depth(tmp_path / "x.png", encoding="exr")


def test_nyu_packing_roundtrip(tmp_path):
    # NYU Hand: depth (mm) = (G << 8) + B, R unused
    mm = np.array([[0, 255, 256], [700, 1000, 65535]], dtype=np.int64)
    rgb = np.zeros(mm.shape + (3,), np.uint8)
    rgb[..., 0] = 77  # ignored
    rgb[..., 1], rgb[..., 2] = mm >> 8, mm & 255
    iio.imwrite(tmp_path / "nyu.png", rgb)
    depth = read_depth(tmp_path / "nyu.png", encoding="nyu")
    assert depth.dtype == torch.float32
    assert torch.equal(depth, torch.from_numpy(mm.astype(np.float32)))
    assert torch.equal(read_depth(tmp_path / "nyu.png", 0.5, "nyu"), depth * 0.5)
    iio.imwrite(tmp_path / "grey16.png", mm.astype(np.uint16))
    with pytest.raises(InputError, match="NYU-packed depth must be an 8-bit RGB image"):
        read_depth(tmp_path / "grey16.png", encoding="nyu")


def test_real_sr305_frame_reads_in_millimetres():
    paths = sorted((SHARED / "data" / "sr305").glob("*/*.png"))
    if not paths:
        pytest.skip(f"the SR305 frames are not at {SHARED / 'data' / 'sr305'}")
    depth = read_depth(paths[0], depth_scale=0.125)
    assert depth.shape == (480, 640)
    valid = depth[depth > 0]
    assert 300 < float(valid.min()) and float(valid.median()) < 1500


# ----------------------------------------------------------------------------- masks, keypoints
def test_masks(tmp_path):
    m = np.zeros((5, 6), np.uint8)
    m[1:3, 2:4] = 255
    iio.imwrite(tmp_path / "m.png", m)
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == torch.bool and mask.shape == (5, 6) and int(mask.sum()) == 4
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha is not the mask
    rgba[0, 0, 1] = 10
    iio.imwrite(tmp_path / "rgba.png", rgba)
    assert int(read_mask(tmp_path / "rgba.png").sum()) == 1
    alpha_only = np.zeros((5, 6, 4), np.uint8)
    alpha_only[2:4, 1:2, 3] = 255
    iio.imwrite(tmp_path / "alpha.png", alpha_only)
    assert int(read_mask(tmp_path / "alpha.png").sum()) == 2
    iio.imwrite(tmp_path / "empty.png", np.zeros((5, 6), np.uint8))
    with pytest.raises(InputError, match="empty.png: the mask has no hand pixel"):
        read_mask(tmp_path / "empty.png")


def test_keypoints(tmp_path):
    (tmp_path / "k.json").write_text(json.dumps({"keypoints": [[1, 2], [3, 4.5]]}))
    kp = read_keypoints_json(tmp_path / "k.json")
    assert kp.dtype == torch.float32 and torch.equal(kp, torch.tensor([[1.0, 2.0], [3.0, 4.5]]))
    (tmp_path / "k3.json").write_text(json.dumps([[1, 2, 300]] * 21))
    assert read_keypoints_json(tmp_path / "k3.json").shape == (21, 3)


@pytest.mark.parametrize("text, message", [
    ("[[1, 2, 3, 4]]", "found rows of length 4"),
    ("[[1, 2], [1, 2, 3]]", "found rows of length 2, 3"),
    ("[[1, null]]", "found null or text"),
    ("[]", "got an empty list"),
    ('{"points": [[1, 2]]}', "'keypoints' list"),
    ("[[1, 2", "invalid JSON"),
    ("[[1, NaN]]", "finite"),
])
def test_bad_keypoints(tmp_path, text, message):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(InputError, match=message):
        read_keypoints_json(tmp_path / "bad.json")


def test_missing_keypoints_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_keypoints_json(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- cameras
def test_camera_from_flags():
    cam = camera_from_args(500, 510, 320, 240, 640, 480)
    assert isinstance(cam, Camera) and cam.batch_size == 1
    assert (cam.width, cam.height) == (640, 480)
    assert [float(getattr(cam, k)[0]) for k in ("fx", "fy", "cx", "cy")] == [500, 510, 320, 240]
    with pytest.raises(InputError, match=r"missing camera intrinsics: give --fy or --camera"):
        camera_from_args(500, None, 320, 240, 640, 480)
    with pytest.raises(InputError, match=r"--cx, --cy"):
        camera_from_args(500, 500, None, None, 640, 480)
    with pytest.raises(InputError, match="bad camera intrinsics.*fx"):
        camera_from_args(-500, 500, 320, 240, 640, 480)
    with pytest.raises(InputError, match="image size"):
        camera_from_args(500, 500, 320, 240)


def test_camera_from_json(tmp_path):
    path = tmp_path / "cam.json"
    path.write_text(json.dumps({"fx": 400, "fy": 410, "cx": 100, "cy": 80}))
    cam = camera_from_args(camera_json=path, width=200, height=160)
    assert float(cam.fx[0]) == 400 and float(cam.fy[0]) == 410 and cam.height == 160
    cam = camera_from_args(fx=420, camera_json=path, width=200, height=160)  # a flag wins
    assert float(cam.fx[0]) == 420 and float(cam.cy[0]) == 80
    path.write_text(json.dumps({"fx": 400, "fy": 410, "cx": 100, "cy": 80, "width": 320, "height": 240}))
    cam = camera_from_args(camera_json=path, width=640, height=480)  # the file's size wins
    assert (cam.width, cam.height) == (320, 240)
    with pytest.raises(InputError, match="for a 320x240 image but the depth frame is 640x480"):
        check_camera_matches(cam, torch.zeros(480, 640))
    path.write_text(json.dumps({"fx": "big", "fy": 410, "cx": 100, "cy": 80}))
    with pytest.raises(InputError, match=r"cam.json: fx must be a number"):
        camera_from_args(camera_json=path, width=640, height=480)
    path.write_text("{not json")
    with pytest.raises(InputError, match="cam.json: invalid JSON"):
        camera_from_args(camera_json=path, width=640, height=480)
    with pytest.raises(InputError, match="no such camera file"):
        camera_from_args(camera_json=tmp_path / "none.json", width=640, height=480)


def test_camera_json_round_trip(tmp_path):
    cam = Camera(476.007, 475.5, 313.683, 242.755, 640, 480)
    d = camera_to_dict(cam)
    assert d == {"fx": pytest.approx(476.007), "fy": 475.5, "cx": pytest.approx(313.683),
                 "cy": pytest.approx(242.755), "width": 640, "height": 480}
    (tmp_path / "cam.json").write_text(json.dumps(d))
    back = camera_from_args(camera_json=tmp_path / "cam.json")
    assert torch.equal(back.K, cam.K) and (back.width, back.height) == (640, 480)
    with pytest.raises(ValueError, match="batch size 1, got batch size 2"):
        camera_to_dict(cam.expand(2))


def test_camera_must_match_image():
    cam = camera_from_args(500, 500, 320, 240, 640, 480)
    check_camera_matches(cam, torch.zeros(480, 640))
    with pytest.raises(InputError, match="640x480 image but the depth frame is 320x240"):
        check_camera_matches(cam, torch.zeros(240, 320))
    with pytest.raises(InputError, match="principal point"):
        check_camera_matches(camera_from_args(500, 500, 900, 240, 640, 480), torch.zeros(480, 640))


# ----------------------------------------------------------------------------- Observation
def small_obs(**kw):
    depth = torch.full((48, 64), 500.0)
    cam = Camera(60.0, 60.0, 31.5, 23.5, 64, 48)
    return Observation(**{"depth": depth, "camera": cam, **kw})


def test_observation_accepts_valid_input():
    obs = small_obs(mask=torch.ones(48, 64, dtype=torch.uint8), rgb=torch.zeros(3, 48, 64, dtype=torch.uint8),
                    keypoints_2d=torch.zeros(21, 2, dtype=torch.float64), keypoints_3d=torch.full((21, 3), float("nan")),
                    keypoint_confidence=torch.ones(21), name="f0")
    assert obs.mask.dtype == torch.bool and bool(obs.mask.all())
    assert obs.keypoints_2d.dtype == obs.depth.dtype  # keypoints follow the depth's dtype; NaN = missing
    assert obs.rgb.dtype == torch.float32 and obs.image_size == (48, 64)
    assert small_obs(depth=torch.full((48, 64), 500, dtype=torch.int32)).depth.dtype == torch.float32


@pytest.mark.parametrize("kw, message", [
    (dict(depth=torch.zeros(48, 64)), "no valid pixel"),
    (dict(depth=torch.full((48, 64), -1.0)), "non-negative"),
    (dict(depth=torch.full((48, 64), float("nan"))), "finite"),
    (dict(depth=torch.ones(1, 48, 64)), "2-D"),
    (dict(depth=torch.ones(48, 32)), "64x48 image but the depth frame is 32x48"),
    (dict(camera=Camera(60.0, 60.0, 31.5, 23.5, 64, 48).expand(2)), "batch size 1"),
    (dict(mask=torch.ones(10, 10, dtype=torch.bool)), "mask must be"),
    (dict(rgb=torch.zeros(48, 64, 3)), r"rgb must be a \(3, H, W\)"),
    (dict(keypoints_2d=torch.zeros(21, 3)), r"keypoints_2d must be a \(21, 2\)"),
    (dict(keypoints_3d=torch.zeros(14, 3)), r"keypoints_3d must be a \(21, 3\)"),
    (dict(keypoints_3d=torch.full((21, 3), float("inf"))), "keypoints_3d hold inf"),
    (dict(keypoint_confidence=-torch.ones(21)), "keypoint_confidence must be finite and >= 0"),
])
def test_observation_rejects_bad_input(kw, message):
    with pytest.raises(InputError, match=message):
        small_obs(**kw)
