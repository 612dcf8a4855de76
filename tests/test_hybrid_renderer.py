"""Tests for renderers.HybridRenderer (PyTorch3D's rasterize_meshes for the fragments, our own
z-buffer and blend): its internals (tiling, the covering face, znear/zfar, exact coverage of
edge pixels), agreement with PyTorch3D's pipeline (renderers.PyTorch3DRenderer), geometry,
gradients against finite differences, settings and input errors."""

import math

import pytest
import torch
from pytorch3d.utils import ico_sphere

from renderers import (
    Camera,
    HybridRenderer,
    HybridRenderSettings,
    PyTorch3DRenderer,
    PyTorch3DRenderSettings,
    RenderOutput,
    make_renderer,
)
from renderers.base import check_mesh_inputs


def sphere(level=2, radius=50.0, centre=(0.0, 0.0, 500.0), scale=(1.0, 1.0, 1.0)):
    """(1, V, 3) mm and (F, 3) faces (counter-clockwise seen from outside)."""
    m = ico_sphere(level)
    verts = m.verts_padded() * radius * torch.tensor(scale) + torch.tensor(centre)
    return verts, m.faces_padded()[0]


def quad(u0, v0, u1, v1, cam, z=500.0):
    """Fronto-parallel rectangle at depth z whose corners project to (u0, v0), (u1, v1);
    two triangles split along the (u0, v0)-(u1, v1) diagonal, facing the camera."""
    fx, fy, cx, cy = (float(getattr(cam, n)[0]) for n in ("fx", "fy", "cx", "cy"))
    x = lambda u: (u - cx) / fx * z
    y = lambda v: (v - cy) / fy * z
    verts = torch.tensor(
        [[[x(u0), y(v0), z], [x(u1), y(v0), z], [x(u1), y(v1), z], [x(u0), y(v1), z]]]
    )
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])
    return verts, faces


def tiny_triangle(u, v, cam, r=0.2, z=500.0):
    """A triangle of "radius" r px around the point that projects to (u, v)."""
    fx, fy, cx, cy = (float(getattr(cam, n)[0]) for n in ("fx", "fy", "cx", "cy"))
    x, y = (u - cx) / fx * z, (v - cy) / fy * z
    dx, dy = r / fx * z, r / fy * z
    verts = torch.tensor([[[x - dx, y - dy, z], [x + dx, y - dy, z], [x, y + dy, z]]])
    return verts, torch.tensor([[0, 2, 1]])


# ----------------------------------------------------------------------------- outputs
def test_output_types_shapes_and_ranges():
    verts, faces = sphere()
    cam = Camera(200.0, 200.0, 31.5, 23.5, 64, 48)
    out = HybridRenderer()(verts, faces, cam)
    assert isinstance(out, RenderOutput)
    assert out.silhouette.shape == out.depth.shape == out.mask.shape == (1, 48, 64)
    assert out.silhouette.dtype == torch.float32 and out.mask.dtype == torch.bool
    assert out.silhouette.min() >= 0 and out.silhouette.max() <= 1
    assert (out.depth[~out.mask] == 0).all()
    assert (out.depth[out.mask] > 449.0).all() and (out.depth[out.mask] < 501.0).all()
    assert out.mask.sum() > 100


def test_float64_in_float64_out():
    verts, faces = sphere(level=1)
    cam = Camera(200.0, 200.0, 15.5, 15.5, 32, 32)
    out = HybridRenderer()(verts.double(), faces, cam)
    assert out.silhouette.dtype == torch.float64 and out.depth.dtype == torch.float64


# ----------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("tile_size", [0, 8])
def test_pixel_centre_convention_row_is_v_col_is_u(tile_size):
    # Non-square image; a 0.2 px triangle around (u, v) = (10, 5) must light exactly
    # pixel [row 5, col 10]; one around the pixel corner (10.5, 5.5) must light none.
    cam = Camera(100.0, 120.0, 11.3, 7.6, 24, 16)
    r = HybridRenderer(HybridRenderSettings(tile_size=tile_size))
    for (u, v) in [(10, 5), (3, 12), (23, 0)]:
        out = r(*tiny_triangle(u, v, cam), cam)
        assert out.mask[0].nonzero().tolist() == [[v, u]]
        assert out.silhouette[0].argmax().item() == v * 24 + u
        assert abs(out.depth[0, v, u].item() - 500.0) < 1e-3
    out = r(*tiny_triangle(10.5, 5.5, cam), cam)
    assert out.mask.sum() == 0


def test_agrees_with_the_pytorch3d_pipeline():
    # Without the covering face and with the same faces per pixel, the hybrid's maps are
    # those of PyTorch3D's MeshRenderer + SoftSilhouetteShader and hard zbuf.
    H, W = 40, 56
    cam = Camera(150.0, 160.0, 24.7, 21.2, W, H)
    verts, faces = sphere(scale=(1.0, 0.7, 0.8), centre=(5.3, -8.2, 500.0))
    out = HybridRenderer()(verts, faces, cam, faces_per_pixel=40, blend_covering_face=False)
    ref = PyTorch3DRenderer()(verts, faces, cam, faces_per_pixel=40)
    assert ref.mask.sum() > 200
    assert torch.equal(out.mask, ref.mask)
    assert torch.allclose(out.depth[ref.mask], ref.depth[ref.mask], atol=2e-3)
    assert torch.allclose(out.silhouette, ref.silhouette, atol=1e-4)


@pytest.mark.parametrize("tile_size", [8, 16, 24])
def test_tiling_does_not_change_the_result(tile_size):
    verts, faces = sphere(level=2, scale=(1.2, 0.8, 1.0))
    cam = Camera(180.0, 180.0, 27.0, 19.0, 56, 40)
    r = HybridRenderer()
    ref = r(verts, faces, cam, tile_size=0)
    out = r(verts, faces, cam, tile_size=tile_size)
    assert torch.equal(out.mask, ref.mask)
    assert torch.allclose(out.silhouette, ref.silhouette, atol=1e-5)
    assert torch.allclose(out.depth, ref.depth, atol=1e-4)


# ----------------------------------------------------------------------------- geometry
def test_silhouette_covers_projected_interior_vertices():
    verts, faces = sphere(level=3)
    cam = Camera(200.0, 200.0, 31.5, 31.5, 64, 64)
    out = HybridRenderer()(verts, faces, cam)
    centre = torch.tensor([0.0, 0.0, 500.0])
    normals = (verts[0] - centre) / 50.0
    view = verts[0] / verts[0].norm(dim=-1, keepdim=True)
    front = (normals * view).sum(-1) < -0.5  # well inside the contour
    uv = cam.project(verts)[0][front].round().long()
    assert len(uv) > 50
    assert (out.silhouette[0, uv[:, 1], uv[:, 0]] > 0.5).all()
    assert out.mask[0, uv[:, 1], uv[:, 0]].all()
    # Far from the sphere (radius ~20 px around (31.5, 31.5)) nothing is drawn.
    assert out.silhouette[0, :5].max() < 1e-3 and not out.mask[0, :5].any()


def test_fronto_parallel_square_depth_and_exact_coverage():
    # Corners at (9.7, 9.7) and (30.3, 30.3): pixel centres 10..30 in both directions are
    # covered, including those exactly on the shared diagonal u = v.
    cam = Camera(250.0, 250.0, 20.0, 20.0, 40, 40)
    verts, faces = quad(9.7, 9.7, 30.3, 30.3, cam)
    out = HybridRenderer()(verts, faces, cam)
    expected = torch.zeros(40, 40, dtype=torch.bool)
    expected[10:31, 10:31] = True
    assert torch.equal(out.mask[0], expected)
    assert torch.allclose(out.depth[0][expected], torch.tensor(500.0), atol=1e-3)
    assert (out.depth[0][~expected] == 0).all()
    assert (out.silhouette[0][expected] > 0.5).all()


def test_slanted_plane_depth_is_perspective_correct():
    # Plane through the points below; depth at each covered pixel must be the
    # ray-plane intersection z = c / (n . d), d = ((u - cx)/fx, (v - cy)/fy, 1).
    cam = Camera(60.0, 60.0, 15.5, 15.5, 32, 32, dtype=torch.float64)
    verts = torch.tensor([[[-200.0, -150.0, 300.0], [250.0, -150.0, 800.0],
                           [250.0, 200.0, 800.0], [-200.0, 200.0, 300.0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])
    out = HybridRenderer()(verts, faces, cam)
    n = torch.cross(verts[0, 1] - verts[0, 0], verts[0, 3] - verts[0, 0], dim=-1)
    c = (n * verts[0, 0]).sum()
    v, u = torch.meshgrid(torch.arange(32.0, dtype=torch.float64),
                          torch.arange(32.0, dtype=torch.float64), indexing="ij")
    d = torch.stack([(u - 15.5) / 60.0, (v - 15.5) / 60.0, torch.ones_like(u)], dim=-1)
    z = c / (d * n).sum(-1)
    m = out.mask[0]
    assert m.sum() > 100
    assert torch.allclose(out.depth[0][m], z[m], atol=1e-3)
    # Linear interpolation in the image would be wrong by millimetres here.
    lin = HybridRenderer()(verts, faces, cam, perspective_correct=False)
    assert (lin.depth[0][m] - z[m]).abs().max() > 1.0


def test_sigma_px_sets_the_blur_in_pixels():
    # A pixel centre r px outside the middle of a long straight edge (the other face is
    # far away) has silhouette sigmoid(-(r / sigma_px)^2), at any image size.
    for H, W in ((48, 64), (96, 80)):
        cam = Camera(250.0, 250.0, W / 2.0, H / 2.0, W, H)
        verts, faces = quad(5.0, 5.0, 30.3, 40.0, cam)  # right edge at u = 30.3
        out = HybridRenderer()(verts, faces, cam, sigma_px=0.5)
        expected = 1.0 / (1.0 + math.exp((0.7 / 0.5) ** 2))  # pixel column 31, r = 0.7
        assert abs(out.silhouette[0, 22, 31].item() - expected) < 1e-4
    s = HybridRenderSettings()
    assert abs(s.sigma_in_pixels(64, 64) - 0.32) < 1e-9
    assert abs(s.sigma_in_pixels(128, 200) - 0.64) < 1e-9
    assert abs(HybridRenderSettings(sigma_px=0.5).sigma_ndc(48, 64) - (1.0 / 48) ** 2) < 1e-15
    assert abs(s.blur_radius(64, 64) - math.log(1e4 - 1) * 1e-4) < 1e-12


def test_covering_face_keeps_covered_pixels_above_half():
    # A finely tessellated mesh with few faces per pixel kept: without the covering
    # face many covered pixels fall below 0.5, with it none do.
    verts, faces = sphere(level=4, scale=(1.0, 1.0, 0.3))
    cam = Camera(120.0, 120.0, 23.5, 23.5, 48, 48)
    r = HybridRenderer(HybridRenderSettings(faces_per_pixel=2))
    out = r(verts, faces, cam)
    assert out.mask.sum() > 300
    assert (out.silhouette[out.mask] >= 0.5 - 1e-4).all()
    plain = r(verts, faces, cam, blend_covering_face=False)
    assert (plain.silhouette[plain.mask] < 0.5).sum() > 10


# ----------------------------------------------------------------------------- batches
def test_batch_with_per_element_cameras_and_faces():
    verts, faces = sphere(level=1)
    verts = torch.cat([verts, verts + torch.tensor([0.0, 0.0, 100.0])])
    cam = Camera(200.0, 200.0, torch.tensor([15.0, 18.0]), 15.0, 32, 32)
    r = HybridRenderer()
    out = r(verts, faces, cam)
    assert out.depth.shape == (2, 32, 32)
    single = r(verts[1:], faces, cam[1])
    assert torch.equal(out.mask[1], single.mask[0])
    assert torch.allclose(out.silhouette[1], single.silhouette[0], atol=1e-6)
    per_elem = r(verts, faces[None].expand(2, -1, -1), cam)
    assert torch.equal(per_elem.mask, out.mask)
    shared_cam = r(verts, faces, cam[0])
    assert torch.equal(shared_cam.mask[0], out.mask[0])
    assert not torch.equal(shared_cam.mask[1], out.mask[1])  # cx differs by 3 px


# ----------------------------------------------------------------------------- gradients
def test_gradients_flow_from_silhouette_and_depth():
    verts, faces = sphere(level=2)
    verts.requires_grad_(True)
    fx = torch.tensor([200.0], requires_grad=True)
    cam = Camera(fx, 200.0, 31.5, 31.5, 64, 64)
    out = HybridRenderer()(verts, faces, cam)
    g_sil, g_fx = torch.autograd.grad(out.silhouette.sum(), (verts, fx), retain_graph=True)
    assert torch.isfinite(g_sil).all() and g_sil.abs().sum() > 0 and g_fx.abs() > 0
    (g_depth,) = torch.autograd.grad(out.depth.sum(), verts)
    assert torch.isfinite(g_depth).all() and g_depth[..., 2].abs().sum() > 0
    # Growing the sphere grows its silhouette: the gradient along the radial
    # direction is positive.
    radial = verts.detach() - torch.tensor([0.0, 0.0, 500.0])
    assert (g_sil * radial).sum() > 0


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    verts, faces = sphere(level=1, scale=(1.0, 0.8, 0.9), centre=(3.0, -4.0, 400.0))
    verts = verts.double()
    cam = Camera(150.0, 150.0, 15.3, 15.8, 32, 32, dtype=torch.float64)
    r = HybridRenderer()
    w = torch.rand(1, 32, 32, dtype=torch.float64)
    x = verts.clone().requires_grad_(True)
    out = r(x, faces, cam)
    g_s, = torch.autograd.grad((out.silhouette * w).sum(), x, retain_graph=True)
    g_d, = torch.autograd.grad((out.depth * w).sum(), x)
    direction = torch.randn_like(verts)
    eps = 1e-6
    op, om = r(verts + eps * direction, faces, cam), r(verts - eps * direction, faces, cam)
    fd_s = ((op.silhouette - om.silhouette) * w).sum() / (2 * eps)
    assert torch.allclose(fd_s, (g_s * direction).sum(), rtol=1e-3, atol=1e-6)
    keep = op.mask & om.mask & out.mask
    fd_d = ((op.depth - om.depth) * w)[keep].sum() / (2 * eps)
    assert torch.allclose(fd_d, (g_d * direction).sum(), rtol=1e-3, atol=1e-6)


def test_off_screen_mesh_renders_empty_and_backward_works():
    verts, faces = sphere(level=1, centre=(5000.0, 0.0, 500.0))
    verts.requires_grad_(True)
    cam = Camera(200.0, 200.0, 15.5, 15.5, 32, 32)
    out = HybridRenderer()(verts, faces, cam)
    assert out.silhouette.abs().sum() == 0 and out.depth.abs().sum() == 0 and not out.mask.any()
    (out.silhouette.sum() + out.depth.sum()).backward()
    assert verts.grad is not None and (verts.grad == 0).all()


# ----------------------------------------------------------------------------- settings
def test_cull_backfaces_uses_image_winding():
    cam = Camera(100.0, 100.0, 10.0, 10.0, 20, 20)
    r = HybridRenderer(HybridRenderSettings(cull_backfaces=True))
    # (0,0) -> (1,0) -> (0,1) in (u, v) is clockwise as displayed (v down): culled.
    z = 100.0
    cw = torch.tensor([[[-5.0, -5.0, z], [5.0, -5.0, z], [-5.0, 5.0, z]]])
    f = torch.tensor([[0, 1, 2]])
    assert r(cw, f, cam).mask.sum() == 0
    assert r(cw, f, cam, cull_backfaces=False).mask.sum() > 0
    assert r(cw, f.flip(-1), cam).mask.sum() > 0
    # A closed, outward-facing mesh looks the same with culling.
    verts, faces = sphere(level=2)
    a = HybridRenderer()(verts, faces, Camera(200.0, 200.0, 31.5, 31.5, 64, 64))
    b = r(verts, faces, Camera(200.0, 200.0, 31.5, 31.5, 64, 64))
    assert torch.equal(a.mask, b.mask) and torch.allclose(a.depth, b.depth)


def test_znear_zfar_discard_fragments():
    cam = Camera(250.0, 250.0, 20.0, 20.0, 40, 40)
    verts, faces = quad(9.7, 9.7, 30.3, 30.3, cam, z=500.0)
    r = HybridRenderer()
    assert r(verts, faces, cam, zfar=600.0).mask.sum() == 441
    far = r(verts, faces, cam, zfar=450.0)
    assert far.mask.sum() == 0 and far.silhouette.max() == 0
    assert r(verts, faces, cam, znear=550.0).mask.sum() == 0


def test_per_call_overrides_and_unknown_names():
    cam = Camera(250.0, 250.0, 20.0, 20.0, 40, 40)
    verts, faces = quad(9.7, 9.7, 30.3, 30.3, cam)
    r = HybridRenderer()
    sharp = r(verts, faces, cam).silhouette
    blurred = r(verts, faces, cam, sigma=1e-2).silhouette  # sigma_px = 2
    assert sharp[0, 20, 8] < 1e-3 and blurred[0, 20, 8] > 0.1  # 1.7 px outside
    assert r.settings.sigma == 1e-4  # the override did not stick
    with pytest.raises(ValueError, match="sigmaa"):
        r(verts, faces, cam, sigmaa=1.0)


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(sigma=0.0), "sigma"),
        (dict(sigma_px=-1.0), "sigma_px"),
        (dict(blur_eps=0.5), "blur_eps"),
        (dict(faces_per_pixel=0), "faces_per_pixel"),
        (dict(tile_size=-1), "tile_size"),
        (dict(bin_size=1.5), "bin_size"),
        (dict(znear=10.0, zfar=5.0), "zfar"),
        (dict(cull_backfaces=1), "cull_backfaces"),
    ],
)
def test_bad_settings_raise_naming_the_field(kw, name):
    with pytest.raises(ValueError, match=name):
        HybridRenderer(HybridRenderSettings(**kw))


def test_registry_name_and_settings_type():
    assert isinstance(make_renderer("hybrid", tile_size=8), HybridRenderer)
    with pytest.raises(ValueError, match="settings must be a HybridRenderSettings"):
        HybridRenderer(PyTorch3DRenderSettings())


def test_binned_rasterization_on_cpu_raises():
    verts, faces = sphere(level=0)
    with pytest.raises(ValueError, match="bin_size"):
        HybridRenderer()(verts, faces, Camera(10.0, 10.0, 4.0, 4.0, 8, 8), bin_size=8)


# ----------------------------------------------------------------------------- input errors
@pytest.mark.parametrize(
    "case, name",
    [
        ("faces_out_of_range", "faces"),
        ("faces_negative", "faces"),
        ("faces_empty", "faces"),
        ("faces_float", "faces"),
        ("faces_wrong_batch", "faces"),
        ("z_zero", "verts"),
        ("z_negative", "verts"),
        ("nan_verts", "verts"),
        ("verts_1d", "verts"),
        ("verts_int", "verts"),
        ("camera_batch", "camera"),
        ("camera_type", "camera"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(case, name):
    verts, faces = sphere(level=0)
    cam = Camera(100.0, 100.0, 8.0, 8.0, 16, 16)
    V = verts.shape[1]
    if case == "faces_out_of_range":
        faces = faces.clone(); faces[0, 0] = V
    elif case == "faces_negative":
        faces = faces.clone(); faces[0, 0] = -1
    elif case == "faces_empty":
        faces = faces[:0]
    elif case == "faces_float":
        faces = faces.float()
    elif case == "faces_wrong_batch":
        faces = faces[None].expand(2, -1, -1)
    elif case == "z_zero":
        verts = verts.clone(); verts[0, 3, 2] = 0.0
    elif case == "z_negative":
        verts = verts - torch.tensor([0.0, 0.0, 1000.0])
    elif case == "nan_verts":
        verts = verts.clone(); verts[0, 2, 0] = float("nan")
    elif case == "verts_1d":
        verts = verts.reshape(-1)
    elif case == "verts_int":
        verts = verts.long()
    elif case == "camera_batch":
        verts = verts.expand(2, -1, -1)
        cam = cam.expand(3)
    elif case == "camera_type":
        cam = cam.K
    with pytest.raises(ValueError, match=name):
        HybridRenderer()(verts, faces, cam)
    with pytest.raises(ValueError, match=name):
        check_mesh_inputs(verts, faces, cam)
