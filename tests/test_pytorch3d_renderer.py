"""Tests of what only renderers.PyTorch3DRenderer, PyTorch3D's own pipeline, does: its camera
conversion (the half-pixel shift of the principal point), agreement with a direct PyTorch3D
MeshRenderer call, float32 inside, the K nearest faces of its blend, its gradients against
the gradchecked soft rasterizer, and its settings. What every renderer promises (outputs,
pixel centres, strict coverage of edge pixels, depth, batches, gradients, overrides, bad
inputs) is in tests/test_renderer_contract.py. PyTorch3D's CPU rasterizer tests every face
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

from renderers import Camera, PyTorch3DRenderer, PyTorch3DRenderSettings, SoftRasterizer


def sphere(level=2, radius=50.0, centre=(0.0, 0.0, 500.0), scale=(1.0, 1.0, 1.0)):
    """(1, V, 3) mm and (F, 3) faces (counter-clockwise seen from outside)."""
    m = ico_sphere(level)
    verts = m.verts_padded() * radius * torch.tensor(scale) + torch.tensor(centre)
    return verts, m.faces_padded()[0]


def tiny_triangle(u, v, cam, r=0.2, z=500.0):
    """A triangle of "radius" r px around the point that projects to (u, v)."""
    fx, fy, cx, cy = (float(getattr(cam, n)[0]) for n in ("fx", "fy", "cx", "cy"))
    x, y = (u - cx) / fx * z, (v - cy) / fy * z
    dx, dy = r / fx * z, r / fy * z
    verts = torch.tensor([[[x - dx, y - dy, z], [x + dx, y - dy, z], [x, y + dy, z]]])
    return verts, torch.tensor([[0, 2, 1]])


# ----------------------------------------------------------------------------- float32, cameras
def test_float64_is_the_float32_render_cast():
    # PyTorch3D rasterizes in float32: a float64 render is the float32 one, cast (the
    # output dtypes and the closeness that every renderer keeps are in the contract suite)
    verts, faces = sphere(level=1)
    cam = Camera(200.0, 200.0, 15.5, 15.5, 32, 32, dtype=torch.float64)
    out64 = PyTorch3DRenderer()(verts.double(), faces, cam)
    out32 = PyTorch3DRenderer()(verts, faces, cam.to(dtype=torch.float32))
    assert torch.equal(out64.mask, out32.mask)
    assert torch.equal(out64.silhouette.float(), out32.silhouette)  # float32 inside
    assert torch.equal(out64.depth.float(), out32.depth)


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


# ----------------------------------------------------------------------------- agreement
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


# ----------------------------------------------------------------------------- blend, gradients
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


# ----------------------------------------------------------------------------- settings
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


def test_binned_rasterization_on_cpu_raises():
    verts, faces = sphere(level=0)
    with pytest.raises(ValueError, match="bin_size"):
        PyTorch3DRenderer()(verts, faces, Camera(10.0, 10.0, 4.0, 4.0, 8, 8), bin_size=8)
