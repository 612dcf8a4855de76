"""Tests for renderers.PyTorch3DRenderer, PyTorch3D's own pipeline: conventions (axes, pixel
centres, units of sigma), agreement with a direct PyTorch3D MeshRenderer call, dtypes,
batches, gradients, settings and input errors. PyTorch3D's CPU rasterizer tests every face
at every pixel, so the images here are small."""

import math

import pytest
import torch
from pytorch3d.renderer import (
    BlendParams,
    MeshRasterizer,
    MeshRenderer,
    RasterizationSettings,
    SoftSilhouetteShader,
)
from pytorch3d.structures import Meshes
from pytorch3d.utils import cameras_from_opencv_projection, ico_sphere

from renderers import (
    Camera,
    HybridRenderSettings,
    PyTorch3DRenderer,
    PyTorch3DRenderSettings,
    RenderOutput,
    SoftRasterizer,
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
    x = lambda u: (u - cx) / fx * z  # noqa: E731
    y = lambda v: (v - cy) / fy * z  # noqa: E731
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
    out = PyTorch3DRenderer()(verts, faces, cam)
    assert isinstance(out, RenderOutput) and out.soft_depth is None
    assert out.silhouette.shape == out.depth.shape == out.mask.shape == (1, 48, 64)
    assert out.silhouette.dtype == torch.float32 and out.mask.dtype == torch.bool
    assert out.silhouette.min() >= 0 and out.silhouette.max() <= 1
    assert (out.depth[~out.mask] == 0).all()
    assert (out.depth[out.mask] > 449.0).all() and (out.depth[out.mask] < 501.0).all()
    assert out.mask.sum() > 100


def test_float64_in_float64_out_and_values_match_float32():
    verts, faces = sphere(level=1)
    cam = Camera(200.0, 200.0, 15.5, 15.5, 32, 32, dtype=torch.float64)
    out64 = PyTorch3DRenderer()(verts.double(), faces, cam)
    assert out64.silhouette.dtype == torch.float64 and out64.depth.dtype == torch.float64
    out32 = PyTorch3DRenderer()(verts, faces, cam.to(dtype=torch.float32))
    assert out32.silhouette.dtype == torch.float32
    assert torch.equal(out64.mask, out32.mask)
    assert torch.equal(out64.silhouette.float(), out32.silhouette)  # float32 inside
    assert torch.equal(out64.depth.float(), out32.depth)


def test_gradient_dtype_follows_verts():
    verts, faces = sphere(level=1)
    v = verts.double().requires_grad_(True)
    out = PyTorch3DRenderer()(v, faces, Camera(200.0, 200.0, 15.5, 15.5, 32, 32))
    (g,) = torch.autograd.grad(out.silhouette.sum() + out.depth.sum(), v)
    assert g.dtype == torch.float64 and torch.isfinite(g).all() and g.abs().sum() > 0


# ----------------------------------------------------------------------------- conventions
def test_pixel_centre_convention_row_is_v_col_is_u():
    # Non-square image; a 0.2 px triangle around (u, v) = (10, 5) must light exactly
    # pixel [row 5, col 10]; one around the pixel corner (10.5, 5.5) must light none.
    cam = Camera(100.0, 120.0, 11.3, 7.6, 24, 16)
    r = PyTorch3DRenderer()
    for (u, v) in [(10, 5), (3, 12), (23, 0)]:
        out = r(*tiny_triangle(u, v, cam), cam)
        assert out.mask[0].nonzero().tolist() == [[v, u]]
        assert out.silhouette[0].argmax().item() == v * 24 + u
        assert abs(out.depth[0, v, u].item() - 500.0) < 1e-3
    out = r(*tiny_triangle(10.5, 5.5, cam), cam)
    assert out.mask.sum() == 0


def test_to_pytorch3d_cameras_moves_the_principal_point_half_a_pixel():
    # cameras_from_opencv_projection alone puts pixel centres at integer + 0.5: the 0.2 px
    # triangle around the (OpenCV) pixel centre (10, 5) then falls on a pixel corner and
    # lights nothing; with to_pytorch3d_cameras it lights pixel [5, 10].
    cam = Camera(100.0, 120.0, 11.3, 7.6, 24, 16)
    verts, faces = tiny_triangle(10, 5, cam)
    meshes = Meshes(verts=verts, faces=faces[None])
    raster = RasterizationSettings(image_size=(16, 24), blur_radius=0.0, faces_per_pixel=1, bin_size=0)
    plain = cameras_from_opencv_projection(R=torch.eye(3)[None], tvec=torch.zeros(1, 3),
                                           camera_matrix=cam.K.float(),
                                           image_size=torch.tensor([[16, 24]]))
    assert (MeshRasterizer(plain, raster)(meshes).pix_to_face >= 0).sum() == 0
    shifted = PyTorch3DRenderer.to_pytorch3d_cameras(cam)
    hit = MeshRasterizer(shifted, raster)(meshes).pix_to_face[0, ..., 0] >= 0
    assert hit.nonzero().tolist() == [[5, 10]]
    assert torch.allclose(shifted.principal_point - plain.principal_point,
                          -0.5 / torch.tensor([8.0, 8.0]))  # scale = min(H, W) / 2 px per NDC unit


def test_agrees_with_a_direct_pytorch3d_meshrenderer_call():
    # The renderer is MeshRenderer(MeshRasterizer, SoftSilhouetteShader) for the silhouette
    # and a hard MeshRasterizer for depth and mask, nothing else.
    H, W = 40, 56
    cam = Camera(150.0, 160.0, 24.7, 21.2, W, H)
    verts, faces = sphere(scale=(1.0, 0.7, 0.8), centre=(5.3, -8.2, 500.0))
    settings = PyTorch3DRenderSettings(sigma_px=0.8, faces_per_pixel=24)
    out = PyTorch3DRenderer(settings)(verts, faces, cam)

    cams = PyTorch3DRenderer.to_pytorch3d_cameras(cam)
    meshes = Meshes(verts=verts, faces=faces[None])
    images = MeshRenderer(
        MeshRasterizer(cams, RasterizationSettings(
            image_size=(H, W), blur_radius=math.log(1e4 - 1) * (1.6 / H) ** 2, faces_per_pixel=24)),
        SoftSilhouetteShader(BlendParams(sigma=(1.6 / H) ** 2)),
    )(meshes)
    hard = MeshRasterizer(cams, RasterizationSettings(
        image_size=(H, W), blur_radius=0.0, faces_per_pixel=1))(meshes)
    mask = hard.pix_to_face[..., 0] >= 0
    assert mask.sum() > 200
    assert torch.equal(out.mask, mask)
    assert torch.equal(out.depth, torch.where(mask, hard.zbuf[..., 0], 0.0))
    assert torch.equal(out.silhouette, images[..., 3])


# ----------------------------------------------------------------------------- geometry
def test_silhouette_and_mask_cover_projected_interior_vertices():
    verts, faces = sphere(level=3)
    cam = Camera(200.0, 200.0, 31.5, 31.5, 64, 64)
    out = PyTorch3DRenderer()(verts, faces, cam)
    centre = torch.tensor([0.0, 0.0, 500.0])
    normals = (verts[0] - centre) / 50.0
    view = verts[0] / verts[0].norm(dim=-1, keepdim=True)
    front = (normals * view).sum(-1) < -0.5  # well inside the contour
    uv = cam.project(verts)[0][front].round().long()
    assert len(uv) > 50
    assert (out.silhouette[0, uv[:, 1], uv[:, 0]] > 0.5).all()
    assert out.mask[0, uv[:, 1], uv[:, 0]].all()
    assert out.silhouette[0, :5].max() < 1e-3 and not out.mask[0, :5].any()


def test_fronto_parallel_square_depth_and_strict_coverage():
    # Corners at (9.7, 9.7) and (30.3, 30.3): pixel centres 10..30 are inside, but those
    # exactly on the shared diagonal u = v may be in neither face (PyTorch3D's inside test
    # is strict, see the module docstring); nothing else may differ.
    cam = Camera(250.0, 250.0, 20.0, 20.0, 40, 40)
    verts, faces = quad(9.7, 9.7, 30.3, 30.3, cam)
    out = PyTorch3DRenderer()(verts, faces, cam)
    expected = torch.zeros(40, 40, dtype=torch.bool)
    expected[10:31, 10:31] = True
    diagonal = torch.eye(40, dtype=torch.bool) & expected
    assert not (out.mask[0] & ~expected).any()
    assert out.mask[0][expected & ~diagonal].all()
    assert torch.allclose(out.depth[0][out.mask[0]], torch.tensor(500.0), atol=1e-3)
    assert (out.depth[0][~out.mask[0]] == 0).all()
    assert (out.silhouette[0][expected] > 0.5).all()


def test_slanted_plane_depth_is_perspective_correct():
    # depth at each covered pixel must be the ray-plane intersection z = c / (n . d),
    # d = ((u - cx)/fx, (v - cy)/fy, 1); linear interpolation in the image is mm off.
    cam = Camera(60.0, 60.0, 15.5, 15.5, 32, 32, dtype=torch.float64)
    verts = torch.tensor([[[-200.0, -150.0, 300.0], [250.0, -150.0, 800.0],
                           [250.0, 200.0, 800.0], [-200.0, 200.0, 300.0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])
    out = PyTorch3DRenderer()(verts, faces, cam)
    n = torch.cross(verts[0, 1] - verts[0, 0], verts[0, 3] - verts[0, 0], dim=-1)
    c = (n * verts[0, 0]).sum()
    v, u = torch.meshgrid(torch.arange(32.0, dtype=torch.float64),
                          torch.arange(32.0, dtype=torch.float64), indexing="ij")
    d = torch.stack([(u - 15.5) / 60.0, (v - 15.5) / 60.0, torch.ones_like(u)], dim=-1)
    z = c / (d * n).sum(-1)
    m = out.mask[0]
    assert m.sum() > 100
    assert torch.allclose(out.depth[0][m], z[m], rtol=1e-5)
    lin = PyTorch3DRenderer()(verts, faces, cam, perspective_correct=False)
    assert (lin.depth[0][m] - z[m]).abs().max() > 1.0


def test_sigma_px_sets_the_blur_in_pixels():
    # A pixel centre r px outside the middle of a long straight edge (the other face is
    # far away) has silhouette sigmoid(-(r / sigma_px)^2), at any image size: the "Units
    # of sigma" of the module docstring, with PyTorch3D's own shader.
    for H, W in ((48, 64), (96, 80)):
        cam = Camera(250.0, 250.0, W / 2.0, H / 2.0, W, H)
        verts, faces = quad(5.0, 5.0, 30.3, 40.0, cam)  # right edge at u = 30.3
        out = PyTorch3DRenderer()(verts, faces, cam, sigma_px=0.5)
        expected = 1.0 / (1.0 + math.exp((0.7 / 0.5) ** 2))  # pixel column 31, r = 0.7
        assert abs(out.silhouette[0, 22, 31].item() - expected) < 1e-4
    s = PyTorch3DRenderSettings()
    assert abs(s.sigma_in_pixels(64, 64) - 0.32) < 1e-9
    assert abs(s.sigma_in_pixels(128, 200) - 0.64) < 1e-9
    assert abs(PyTorch3DRenderSettings(sigma_px=0.5).sigma_ndc(48, 64) - (1.0 / 48) ** 2) < 1e-15
    assert abs(s.blur_radius(64, 64) - math.log(1e4 - 1) * 1e-4) < 1e-12
    assert abs(s.blur_radius_px(64, 64) - 0.32 * math.sqrt(math.log(1e4 - 1))) < 1e-9


def test_few_faces_per_pixel_can_drop_the_covering_face():
    # PyTorch3D blends only the K nearest faces in z: on a finely tessellated mesh with
    # K = 2 some covered pixels fall below 0.5 (the module docstring); K = 64 fixes it.
    verts, faces = sphere(level=4, scale=(1.0, 1.0, 0.3))
    cam = Camera(120.0, 120.0, 23.5, 23.5, 48, 48)
    r = PyTorch3DRenderer()
    few = r(verts, faces, cam, faces_per_pixel=2)
    assert few.mask.sum() > 300
    assert (few.silhouette[few.mask] < 0.5).sum() > 10
    many = r(verts, faces, cam, faces_per_pixel=64)
    assert (many.silhouette[many.mask] >= 0.5).all()
    assert torch.equal(few.mask, many.mask) and torch.equal(few.depth, many.depth)


# ----------------------------------------------------------------------------- batches
def test_batch_with_per_element_cameras_and_faces():
    verts, faces = sphere(level=1)
    verts = torch.cat([verts, verts + torch.tensor([0.0, 0.0, 100.0])])
    cam = Camera(200.0, 200.0, torch.tensor([15.0, 18.0]), 15.0, 32, 32)
    r = PyTorch3DRenderer()
    out = r(verts, faces, cam)
    assert out.depth.shape == (2, 32, 32)
    for b in range(2):
        single = r(verts[b:b + 1], faces, cam[b])
        assert torch.equal(out.mask[b], single.mask[0])
        assert torch.allclose(out.silhouette[b], single.silhouette[0], atol=1e-6)
        assert torch.allclose(out.depth[b], single.depth[0], atol=1e-4)
    per_elem = r(verts, faces[None].expand(2, -1, -1), cam)
    assert torch.equal(per_elem.mask, out.mask) and torch.equal(per_elem.depth, out.depth)
    shared_cam = r(verts, faces, cam[0])
    assert torch.equal(shared_cam.mask[0], out.mask[0])
    assert not torch.equal(shared_cam.mask[1], out.mask[1])  # cx differs by 3 px


# ----------------------------------------------------------------------------- gradients
def test_gradients_flow_from_silhouette_and_depth():
    verts, faces = sphere(level=2)
    verts.requires_grad_(True)
    fx = torch.tensor([200.0], requires_grad=True)
    cam = Camera(fx, 200.0, 31.5, 31.5, 64, 64)
    out = PyTorch3DRenderer()(verts, faces, cam)
    g_sil, g_fx = torch.autograd.grad(out.silhouette.sum(), (verts, fx), retain_graph=True)
    assert torch.isfinite(g_sil).all() and g_sil.abs().sum() > 0 and g_fx.abs() > 0
    (g_depth,) = torch.autograd.grad(out.depth.sum(), verts)
    assert torch.isfinite(g_depth).all() and g_depth[..., 2].abs().sum() > 0
    # Growing the sphere grows its silhouette.
    radial = verts.detach() - torch.tensor([0.0, 0.0, 500.0])
    assert (g_sil * radial).sum() > 0


def test_gradients_agree_with_the_gradchecked_soft_rasterizer():
    # With enough faces per pixel PyTorch3D's silhouette is the all-faces SoftRas
    # aggregate of SoftRasterizer (whose gradients pass gradcheck), and the depth is the
    # same z-buffer: PyTorch3D's backward must give the same vertex gradients.
    verts, faces = sphere(level=2, scale=(1.0, 0.8, 0.9), centre=(3.0, -4.0, 500.0))
    cam = Camera(150.0, 150.0, 23.5, 23.5, 48, 48)
    w = torch.rand(1, 48, 48, generator=torch.Generator().manual_seed(0))
    grads = []
    for renderer, kw in ((PyTorch3DRenderer(), {"faces_per_pixel": 48}), (SoftRasterizer(), {})):
        v = verts.clone().requires_grad_(True)
        out = renderer(v, faces, cam, sigma_px=0.7, **kw)
        grads.append(torch.autograd.grad((out.silhouette * w).sum() + (out.depth * w).sum(), v)[0])
    assert grads[1].abs().sum() > 0
    assert (grads[0] - grads[1]).norm() < 1e-4 * grads[1].norm()


def test_off_screen_mesh_renders_empty_and_backward_works():
    verts, faces = sphere(level=1, centre=(5000.0, 0.0, 500.0))
    verts.requires_grad_(True)
    cam = Camera(200.0, 200.0, 15.5, 15.5, 32, 32)
    out = PyTorch3DRenderer()(verts, faces, cam)
    assert out.silhouette.abs().sum() == 0 and out.depth.abs().sum() == 0 and not out.mask.any()
    (out.silhouette.sum() + out.depth.sum()).backward()
    assert verts.grad is not None and (verts.grad == 0).all()


# ----------------------------------------------------------------------------- settings
def test_cull_backfaces_uses_image_winding():
    cam = Camera(100.0, 100.0, 10.0, 10.0, 20, 20)
    r = PyTorch3DRenderer(PyTorch3DRenderSettings(cull_backfaces=True))
    # (0,0) -> (1,0) -> (0,1) in (u, v) is clockwise as displayed (v down): culled.
    z = 100.0
    cw = torch.tensor([[[-5.0, -5.0, z], [5.0, -5.0, z], [-5.0, 5.0, z]]])
    f = torch.tensor([[0, 1, 2]])
    assert r(cw, f, cam).mask.sum() == 0 and r(cw, f, cam).silhouette.max() == 0
    assert r(cw, f, cam, cull_backfaces=False).mask.sum() > 0
    assert r(cw, f.flip(-1), cam).mask.sum() > 0
    # A closed, outward-facing mesh has the same mask and depth with culling.
    verts, faces = sphere(level=2)
    cam = Camera(200.0, 200.0, 31.5, 31.5, 64, 64)
    a = PyTorch3DRenderer()(verts, faces, cam)
    b = r(verts, faces, cam)
    assert torch.equal(a.mask, b.mask) and torch.allclose(a.depth, b.depth)


def test_per_call_overrides_and_unknown_names():
    cam = Camera(250.0, 250.0, 20.0, 20.0, 40, 40)
    verts, faces = quad(9.7, 9.7, 30.3, 30.3, cam)
    r = PyTorch3DRenderer()
    sharp = r(verts, faces, cam).silhouette
    blurred = r(verts, faces, cam, sigma=1e-2).silhouette  # sigma_px = 2
    assert sharp[0, 20, 8] < 1e-3 and blurred[0, 20, 8] > 0.1  # 1.7 px outside
    assert r.settings.sigma == 1e-4  # the override did not stick
    with pytest.raises(ValueError, match="sigmaa"):
        r(verts, faces, cam, sigmaa=1.0)
    with pytest.raises(ValueError, match="unknown setting override.*tile_size"):
        r(verts, faces, cam, tile_size=8)  # a hybrid setting, not PyTorch3D's
    with pytest.raises(ValueError, match="faces_per_pixel"):
        r(verts, faces, cam, faces_per_pixel=0)


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(sigma_px=-1.0), "sigma_px"),
        (dict(blur_eps=0.5), "blur_eps"),
        (dict(faces_per_pixel=0), "faces_per_pixel"),
        (dict(faces_per_pixel=2.0), "faces_per_pixel"),
        (dict(bin_size=1.5), "bin_size"),
        (dict(max_faces_per_bin=0), "max_faces_per_bin"),
        (dict(perspective_correct="yes"), "perspective_correct"),
        (dict(cull_backfaces=1), "cull_backfaces"),
    ],
)
def test_bad_settings_raise_naming_the_field(kw, name):
    with pytest.raises(ValueError, match=name):
        PyTorch3DRenderer(PyTorch3DRenderSettings(**kw))


def test_settings_of_another_renderer_raise():
    with pytest.raises(ValueError, match="settings must be a PyTorch3DRenderSettings"):
        PyTorch3DRenderer(HybridRenderSettings())


def test_binned_rasterization_on_cpu_raises():
    verts, faces = sphere(level=0)
    with pytest.raises(ValueError, match="bin_size"):
        PyTorch3DRenderer()(verts, faces, Camera(10.0, 10.0, 4.0, 4.0, 8, 8), bin_size=8)


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
        faces = faces.clone(); faces[0, 0] = V  # noqa: E702
    elif case == "faces_negative":
        faces = faces.clone(); faces[0, 0] = -1  # noqa: E702
    elif case == "faces_empty":
        faces = faces[:0]
    elif case == "faces_float":
        faces = faces.float()
    elif case == "faces_wrong_batch":
        faces = faces[None].expand(2, -1, -1)
    elif case == "z_zero":
        verts = verts.clone(); verts[0, 3, 2] = 0.0  # noqa: E702
    elif case == "z_negative":
        verts = verts - torch.tensor([0.0, 0.0, 1000.0])
    elif case == "nan_verts":
        verts = verts.clone(); verts[0, 2, 0] = float("nan")  # noqa: E702
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
        PyTorch3DRenderer()(verts, faces, cam)
    with pytest.raises(ValueError, match=name):
        check_mesh_inputs(verts, faces, cam)
