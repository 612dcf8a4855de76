"""Tests for renderers.camera.Camera: conventions, batching, crop maths, errors, and
agreement with kornia's pinhole functions. (Camera JSON files: tests/test_io.py.)"""

import pytest
import torch
import torch.nn.functional as F

from renderers import Camera


def make_cam(**kw):
    args = dict(fx=500.0, fy=400.0, cx=31.5, cy=23.5, width=64, height=48)
    args.update(kw)
    return Camera(**args)


# ----------------------------------------------------------------------------- basics
def test_scalars_become_batch_of_one():
    cam = make_cam()
    assert cam.batch_size == 1
    for name in ("fx", "fy", "cx", "cy"):
        t = getattr(cam, name)
        assert isinstance(t, torch.Tensor) and t.shape == (1,)
    assert cam.dtype == torch.get_default_dtype()
    assert cam.device == torch.device("cpu")
    assert (cam.width, cam.height) == (64, 48)


def test_broadcast_batch_and_zero_dim():
    cam = Camera(torch.tensor([100.0, 200.0, 300.0]), torch.tensor(150.0), 10.0, [5.0], 32, 16)
    assert cam.batch_size == 3
    assert torch.equal(cam.fy, torch.full((3,), 150.0))
    assert torch.equal(cam.cy, torch.full((3,), 5.0))


def test_tensor_dtype_is_kept():
    cam = Camera(torch.tensor([100.0], dtype=torch.float64), 100.0, 1.0, 1.0, 4, 4)
    assert cam.dtype == torch.float64


def test_K():
    cam = Camera(torch.tensor([100.0, 200.0]), torch.tensor([110.0, 210.0]), 1.5, 2.5, 8, 8)
    K = cam.K
    assert K.shape == (2, 3, 3)
    expected = torch.tensor(
        [[[100.0, 0, 1.5], [0, 110.0, 2.5], [0, 0, 1]], [[200.0, 0, 1.5], [0, 210.0, 2.5], [0, 0, 1]]]
    )
    assert torch.equal(K, expected)


# ----------------------------------------------------------------------------- projection
def test_known_point_lands_at_expected_pixel():
    # OpenCV convention: pixel (row i, col j) is centred at (u, v) = (j, i).
    cam = make_cam()  # fx=500, fy=400, cx=31.5, cy=23.5
    pts = torch.tensor([[[0.0, 0.0, 500.0], [10.0, -5.0, 500.0], [-20.0, 40.0, 1000.0]]])
    uv = cam.project(pts)
    expected = torch.tensor([[[31.5, 23.5], [41.5, 19.5], [21.5, 39.5]]])
    assert torch.allclose(uv, expected, atol=1e-5)


def test_x_right_y_down():
    cam = make_cam()
    uv = cam.project(torch.tensor([[[1.0, 0.0, 100.0], [0.0, 1.0, 100.0]]]))
    assert uv[0, 0, 0] > 31.5 and abs(uv[0, 0, 1] - 23.5) < 1e-6  # +x -> right (u grows)
    assert uv[0, 1, 1] > 23.5 and abs(uv[0, 1, 0] - 31.5) < 1e-6  # +y -> down (v grows)


def test_project_unproject_round_trip():
    torch.manual_seed(0)
    cam = Camera(torch.tensor([400.0, 500.0, 600.0]), torch.tensor([410.0, 490.0, 610.0]),
                 torch.tensor([30.0, 31.5, 33.0]), torch.tensor([20.0, 24.0, 25.0]), 64, 48)
    pts = torch.randn(3, 50, 3) * 30 + torch.tensor([0.0, 0.0, 400.0])
    uv = cam.project(pts)
    back = cam.unproject(uv, pts[..., 2])
    assert back.shape == (3, 50, 3)
    assert torch.allclose(back, pts, atol=1e-3)


def test_batch_of_one_camera_broadcasts():
    cam = make_cam()
    pts = torch.randn(4, 10, 3) + torch.tensor([0.0, 0.0, 300.0])
    uv = cam.project(pts)
    assert uv.shape == (4, 10, 2)
    assert torch.allclose(uv[2], cam.project(pts[2:3])[0])
    back = cam.unproject(uv, pts[..., 2])
    assert torch.allclose(back, pts, atol=1e-4)


def test_project_batch_mismatch_raises():
    cam = Camera(torch.tensor([1.0, 2.0]), 1.0, 0.0, 0.0, 4, 4)
    with pytest.raises(ValueError, match="points"):
        cam.project(torch.ones(3, 5, 3))
    with pytest.raises(ValueError, match="points"):
        cam.project(torch.ones(5, 3))
    with pytest.raises(ValueError, match="depth"):
        cam.unproject(torch.ones(2, 5, 2), torch.ones(2, 4))


def test_gradients_reach_points_and_intrinsics():
    fx = torch.tensor([300.0], requires_grad=True)
    cam = Camera(fx, 300.0, 10.0, 10.0, 20, 20)
    pts = torch.tensor([[[5.0, 2.0, 100.0]]], requires_grad=True)
    cam.project(pts).sum().backward()
    assert fx.grad is not None and fx.grad.abs().item() > 0
    assert pts.grad.abs().sum().item() > 0


# ----------------------------------------------------------------------------- batching ops
def test_to_expand_getitem_cat():
    cam = Camera(torch.tensor([100.0, 200.0, 300.0]), 100.0, torch.tensor([1.0, 2.0, 3.0]), 4.0, 8, 6)
    c64 = cam.to(dtype=torch.float64)
    assert c64.dtype == torch.float64 and torch.allclose(c64.fx.float(), cam.fx)

    one = cam[1]
    assert one.batch_size == 1 and one.fx.item() == 200.0 and one.cx.item() == 2.0
    assert cam[-1].fx.item() == 300.0
    assert torch.equal(cam[1:].fx, torch.tensor([200.0, 300.0]))
    assert torch.equal(cam[torch.tensor([True, False, True])].fx, torch.tensor([100.0, 300.0]))
    assert torch.equal(cam[torch.tensor([2, 0])].cx, torch.tensor([3.0, 1.0]))
    assert torch.equal(cam[[2, 0]].fx, torch.tensor([300.0, 100.0]))
    with pytest.raises(IndexError):
        cam[3]
    with pytest.raises(IndexError):
        cam[torch.tensor([True, False])]
    with pytest.raises(ValueError, match="idx"):
        cam[torch.zeros(3, dtype=torch.bool)]

    e = one.expand(4)
    assert e.batch_size == 4 and torch.equal(e.fx, torch.full((4,), 200.0))
    assert cam.expand(3).batch_size == 3
    with pytest.raises(ValueError, match="batch_size"):
        cam.expand(2)

    c = Camera.cat([cam, one])
    assert c.batch_size == 4 and torch.equal(c.fx, torch.tensor([100.0, 200.0, 300.0, 200.0]))
    assert Camera.cat([cam, c64]).dtype == torch.float64  # dtypes are promoted
    with pytest.raises(ValueError, match="cameras"):
        Camera.cat([])
    with pytest.raises(ValueError, match="cameras\\[1\\]"):
        Camera.cat([cam, Camera(1.0, 1.0, 0.0, 0.0, 9, 6)])
    with pytest.raises(ValueError, match="dtype"):
        cam.to(dtype=torch.int64)


# ----------------------------------------------------------------------------- crop
def test_crop_formula():
    cam = make_cam()
    c = cam.crop(x0=10.0, y0=4.0, size=32.0, out_size=64)  # s = 0.5
    assert (c.width, c.height) == (64, 64)
    assert torch.allclose(c.fx, torch.tensor([1000.0]))
    assert torch.allclose(c.fy, torch.tensor([800.0]))
    assert torch.allclose(c.cx, torch.tensor([(31.5 + 0.5 - 10.0) / 0.5 - 0.5]))
    assert torch.allclose(c.cy, torch.tensor([(23.5 + 0.5 - 4.0) / 0.5 - 0.5]))


def test_crop_identity_window_is_identity():
    cam = make_cam(width=48)
    c = cam.crop(0.0, 0.0, 48.0, 48)
    for n in ("fx", "fy", "cx", "cy"):
        assert torch.allclose(getattr(c, n), getattr(cam, n))


def test_crop_point_lands_at_rule_pixel():
    torch.manual_seed(1)
    cam = Camera(torch.tensor([500.0, 450.0]), torch.tensor([500.0, 460.0]),
                 torch.tensor([319.5, 300.0]), torch.tensor([239.5, 250.0]), 640, 480)
    x0 = torch.tensor([200.3, 150.0])
    y0 = torch.tensor([120.7, 90.0])
    size = torch.tensor([160.0, 300.0])
    out = 128
    crop = cam.crop(x0, y0, size, out)
    assert crop.batch_size == 2
    pts = torch.randn(2, 20, 3) * 20 + torch.tensor([0.0, 0.0, 600.0])
    uv = cam.project(pts)
    s = (size / out)[:, None]
    expected_u = (uv[..., 0] + 0.5 - x0[:, None]) / s - 0.5
    expected_v = (uv[..., 1] + 0.5 - y0[:, None]) / s - 0.5
    uv_crop = crop.project(pts)
    assert torch.allclose(uv_crop[..., 0], expected_u, atol=1e-3)
    assert torch.allclose(uv_crop[..., 1], expected_v, atol=1e-3)


def test_crop_matches_grid_sample_align_corners_false():
    # An image that is linear in the continuous pixel coordinates, img(u, v) = u + 1000 v,
    # is reproduced exactly by bilinear sampling away from the borders. Resample a window
    # with the documented grid, then check every crop pixel against the value at the
    # original pixel coordinates of the 3D point that the crop camera puts there.
    H, W = 40, 50
    cam = Camera(120.0, 120.0, 24.5, 19.5, W, H, dtype=torch.float64)
    v_idx, u_idx = torch.meshgrid(torch.arange(H, dtype=torch.float64),
                                  torch.arange(W, dtype=torch.float64), indexing="ij")
    img = (u_idx + 1000.0 * v_idx)[None, None]
    x0, y0, size, out = 10.25, 7.5, 24.0, 16
    s = size / out
    j = torch.arange(out, dtype=torch.float64)
    ex = x0 + (j + 0.5) * s  # edge coordinates of the crop pixel centres
    ey = y0 + (j + 0.5) * s
    gy, gx = torch.meshgrid(2 * ey / H - 1, 2 * ex / W - 1, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]
    crop_img = F.grid_sample(img, grid, mode="bilinear", align_corners=False)[0, 0]

    crop_cam = cam.crop(x0, y0, size, out)
    vv, uu = torch.meshgrid(j, j, indexing="ij")
    uv_crop = torch.stack([uu, vv], dim=-1).reshape(1, -1, 2)
    pts = crop_cam.unproject(uv_crop, torch.full((1, out * out), 700.0, dtype=torch.float64))
    uv = cam.project(pts)[0]
    expected = (uv[:, 0] + 1000.0 * uv[:, 1]).reshape(out, out)
    assert torch.allclose(crop_img, expected, atol=1e-6)


def test_crop_errors():
    cam = make_cam()
    with pytest.raises(ValueError, match="size"):
        cam.crop(0.0, 0.0, 0.0, 16)
    with pytest.raises(ValueError, match="out_size"):
        cam.crop(0.0, 0.0, 10.0, 0)
    with pytest.raises(ValueError, match="x0"):
        cam.crop(float("nan"), 0.0, 10.0, 16)
    with pytest.raises(ValueError, match="batch sizes"):
        cam.crop(torch.zeros(2), torch.zeros(3), 10.0, 16)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(fx=0.0), "fx"),
        (dict(fx=-1.0), "fx"),
        (dict(fy=float("nan")), "fy"),
        (dict(fy=float("inf")), "fy"),
        (dict(cx=float("nan")), "cx"),
        (dict(cy=float("inf")), "cy"),
        (dict(width=0), "width"),
        (dict(width=64.5), "width"),
        (dict(height=-3), "height"),
        (dict(height=True), "height"),
        (dict(fx=torch.ones(2, 2)), "fx"),
        (dict(fx="a"), "fx"),
        (dict(fx=torch.ones(2), cx=torch.zeros(3)), "batch sizes"),
        (dict(dtype=torch.int32), "dtype"),
    ],
)
def test_invalid_arguments_raise_naming_them(kw, name):
    with pytest.raises(ValueError, match=name):
        make_cam(**kw)


# ----------------------------------------------------------------------------- kornia
def test_project_and_unproject_equal_kornias():
    # Same K, same formula: kornia's functional pinhole model on (B, N, 3), including a
    # camera of batch 1 for B points and points of batch 1 for B cameras.
    perspective = pytest.importorskip("kornia.geometry.camera.perspective")
    torch.manual_seed(2)
    cam = Camera(torch.tensor([400.0, 500.0, 600.0]), torch.tensor([410.0, 490.0, 610.0]),
                 torch.tensor([30.0, 31.5, 33.0]), torch.tensor([20.0, 24.0, 25.0]), 64, 48)
    pts = torch.randn(3, 50, 3) * 30 + torch.tensor([0.0, 0.0, 400.0])
    for c, p in ((cam, pts), (cam[1], pts), (cam, pts[:1])):
        uv = c.project(p)
        assert torch.allclose(uv, perspective.project_points(p, c.K), rtol=0, atol=1e-4)
        z = p[..., 2].expand(uv.shape[:2])
        ref = perspective.unproject_points(uv, z[..., None], c.K)
        assert torch.allclose(c.unproject(uv, z), ref, rtol=0, atol=1e-3)


def test_pixel_centres_match_kornias_depth_to_3d():
    # kornia's depth image -> points puts pixel (row i, col j) at (u, v) = (j, i), ours too:
    # unprojecting every pixel's integer (col, row) gives kornia's point cloud.
    depth_mod = pytest.importorskip("kornia.geometry.depth")
    H, W = 6, 8
    cam = make_cam(width=W, height=H, cx=3.5, cy=2.5)
    depth = torch.rand(H, W) * 100 + 400
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    uv = torch.stack([cols, rows], -1).reshape(1, -1, 2).float()
    ours = cam.unproject(uv, depth.reshape(1, -1)).reshape(1, H, W, 3)
    assert torch.allclose(ours, depth_mod.depth_to_3d_v2(depth, cam.K), rtol=0, atol=1e-4)
    # the principal point (W - 1) / 2 is the middle of the image: a centred point lands there
    assert torch.allclose(cam.project(torch.tensor([[[0.0, 0.0, 1.0]]])), torch.tensor([[[3.5, 2.5]]]))
