"""Tests of what only renderers.HybridRenderer does (PyTorch3D's rasterize_meshes for the
fragments, our own z-buffer and blend): its internals (tiling, the covering face, znear and
zfar), its agreement with PyTorch3D's pipeline (renderers.PyTorch3DRenderer), gradients
against finite differences and its settings. What every renderer promises (outputs, pixel
centres, exact coverage of edge pixels, depth, batches, gradients, overrides, bad inputs) is
in tests/test_renderer_contract.py."""

import pytest
import torch
from pytorch3d.utils import ico_sphere

from renderers import Camera, HybridRenderer, HybridRenderSettings, PyTorch3DRenderer


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


# ----------------------------------------------------------------------------- tiling
@pytest.mark.parametrize("tile_size", [0, 8])
def test_pixel_centre_convention_holds_without_tiles_and_with_small_ones(tile_size):
    # Each tile's NDC must put its pixel centres at the integers: a 0.2 px triangle around
    # (u, v) = (10, 5) lights exactly pixel [row 5, col 10], one around the pixel corner
    # (10.5, 5.5) none. (The default tiling, 16 px here, is in the contract suite.)
    cam = Camera(100.0, 120.0, 11.3, 7.6, 24, 16)
    r = HybridRenderer(HybridRenderSettings(tile_size=tile_size))
    for (u, v) in [(10, 5), (3, 12), (23, 0)]:
        out = r(*tiny_triangle(u, v, cam), cam)
        assert out.mask[0].nonzero().tolist() == [[v, u]]
        assert out.silhouette[0].argmax().item() == v * 24 + u
        assert abs(out.depth[0, v, u].item() - 500.0) < 1e-3
    out = r(*tiny_triangle(10.5, 5.5, cam), cam)
    assert out.mask.sum() == 0


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


# ----------------------------------------------------------------------------- agreement
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


# ----------------------------------------------------------------------------- blend, gradients
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


# ----------------------------------------------------------------------------- settings
def test_znear_zfar_discard_fragments():
    cam = Camera(250.0, 250.0, 20.0, 20.0, 40, 40)
    verts, faces = quad(9.7, 9.7, 30.3, 30.3, cam, z=500.0)
    r = HybridRenderer()
    assert r(verts, faces, cam, zfar=600.0).mask.sum() == 441
    far = r(verts, faces, cam, zfar=450.0)
    assert far.mask.sum() == 0 and far.silhouette.max() == 0
    assert r(verts, faces, cam, znear=550.0).mask.sum() == 0


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


def test_binned_rasterization_on_cpu_raises():
    verts, faces = sphere(level=0)
    with pytest.raises(ValueError, match="bin_size"):
        HybridRenderer()(verts, faces, Camera(10.0, 10.0, 4.0, 4.0, 8, 8), bin_size=8)
