"""Tests of what only renderers.SoftRasterizer and renderers.SplatRenderer do: parity with
PyTorch3D's own pipeline (renderers.PyTorch3DRenderer: MeshRenderer + SoftSilhouetteShader,
hard zbuf) on the default hand, the splat radius rule and subdivision, gradients (gradcheck,
the splat's winning vertex, the soft silhouette's hidden vertex), soft back-face culling and
their settings. What every renderer promises (outputs, pixel centres, batches, gradients,
overrides, bad inputs) is in tests/test_renderer_contract.py."""

import pytest
import torch
from pytorch3d.utils import ico_sphere

from fitting.synthetic import random_hand_parameters
from renderers import (
    Camera,
    HybridRenderer,
    PyTorch3DRenderer,
    SoftRasterizer,
    SoftRasterizerSettings,
    SplatRenderer,
    SplatRenderSettings,
)
from renderers.splat import splat_radii, subdivide


def sphere(level=2, radius=50.0, centre=(0.0, 0.0, 500.0)):
    m = ico_sphere(level)
    return m.verts_padded() * radius + torch.tensor(centre), m.faces_padded()[0]


def crop_camera(size):
    f = size * 450.0 / 220.0  # a 220 mm box at 450 mm fills the image
    return Camera(f, f, size / 2 - 0.5, size / 2 - 0.5, size, size)


@pytest.fixture(scope="module")
def hand_poses(hand_model):
    """Vertices (3, V, 3) mm of the default hand in three random poses at 450 mm."""
    out = []
    for seed in (0, 1, 2):
        p = random_hand_parameters(hand_model, torch.Generator().manual_seed(seed))
        p["transl"] = torch.tensor([[0.0, 0.0, 450.0]])
        with torch.no_grad():
            out.append(hand_model(**p).vertices[0])
    return torch.stack(out)


#: Image side of the parity tests: PyTorch3D's CPU rasterizer tests every face at every pixel.
PARITY_SIZE = 64

#: Faces per pixel of the PyTorch3D reference: enough that its K-nearest blend is the
#: aggregate over every face within the blur radius (at 64 px and sigma_px = 0.5, K = 16
#: leaves a mean silhouette difference of 0.024-0.032 to it, K = 64 one of 7e-5 to 3.4e-4).
PARITY_FACES_PER_PIXEL = 64


@pytest.fixture(scope="module")
def pytorch3d_reference(hand_model, hand_poses):
    """PyTorch3D's own maps of the three poses at 64 px, sigma_px = 0.5 (RenderOutput, B = 3)."""
    with torch.no_grad():
        return PyTorch3DRenderer()(hand_poses, hand_model.faces, crop_camera(PARITY_SIZE), sigma_px=0.5,
                                   faces_per_pixel=PARITY_FACES_PER_PIXEL)


def iou(a, b):
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


# ----------------------------------------------------------------------------- parity
def test_soft_silhouette_and_depth_match_pytorch3d_on_the_default_hand(hand_model, hand_poses,
                                                                     pytorch3d_reference):
    ref = pytorch3d_reference
    out = SoftRasterizer()(hand_poses, hand_model.faces, crop_camera(PARITY_SIZE), sigma_px=0.5)
    for b in range(3):
        assert ref.mask[b].sum() > 500
        assert float((out.silhouette[b] - ref.silhouette[b]).abs().mean()) < 0.01  # measured <= 3.4e-4
        assert iou(out.mask[b], ref.mask[b]) > 0.999
        both = out.mask[b] & ref.mask[b]
        # measured 2.6e-5 to 2.7e-5 mm: float32 rounding (its spacing at 450 mm is 3.1e-5 mm)
        assert float((out.depth[b] - ref.depth[b])[both].abs().mean()) < 5e-5


def test_soft_hard_limit_matches_pytorch3d_hard_silhouette_and_depth(hand_model, hand_poses,
                                                                    pytorch3d_reference):
    ref = pytorch3d_reference
    out = SoftRasterizer()(hand_poses, hand_model.faces, crop_camera(PARITY_SIZE), sigma_px=0.02,
                           soft_depth=True, gamma_mm=0.1)
    for b in range(3):
        assert iou(out.silhouette[b] > 0.5, ref.mask[b]) > 0.99
        assert iou(out.mask[b], ref.mask[b]) > 0.99
        both = out.mask[b] & ref.mask[b]
        assert float((out.depth[b] - ref.depth[b])[both].abs().mean()) < 1e-4
        assert float((out.soft_depth[b] - ref.depth[b])[both].abs().mean()) < 0.5


def test_splat_depth_matches_pytorch3d_depth_and_has_no_holes(hand_model, hand_poses, pytorch3d_reference):
    for size in (PARITY_SIZE, 128):
        cam = crop_camera(size)
        if size == PARITY_SIZE:
            ref = pytorch3d_reference
        else:  # only the hard pass matters here: one face per pixel is the cheapest
            with torch.no_grad():
                ref = PyTorch3DRenderer()(hand_poses, hand_model.faces, cam, faces_per_pixel=1)
        out = SplatRenderer()(hand_poses, hand_model.faces, cam)
        both = out.mask & ref.mask
        assert ref.mask.sum() > 3000
        assert float((out.depth - ref.depth)[both].abs().median()) < 2.0
        assert not (ref.mask & ~out.mask).any(), "a covered pixel is missing from the splat mask"


def test_splat_radius_rule_is_the_longest_projected_edge_around_each_vertex():
    uv = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [9.0, 9.0]]])
    faces = torch.tensor([[0, 1, 2]])
    radii = splat_radii(uv, faces)
    assert torch.allclose(radii, torch.tensor([[5.0, 5.0, 5.0, 0.0]]))


def test_subdivide_adds_edge_midpoints_and_four_faces_per_face():
    verts, faces = sphere(level=1)
    sub_v, sub_f = subdivide(verts, faces)
    n_edges = 3 * faces.shape[0] // 2  # closed mesh
    assert sub_v.shape == (1, verts.shape[1] + n_edges, 3) and sub_f.shape == (4 * faces.shape[0], 3)
    assert sub_f.max() == sub_v.shape[1] - 1
    F = faces.shape[0]
    centre = sub_f[3 * F:]  # the middle face of each original face: (ab, bc, ca)
    a, b, c = (verts[0, faces[:, k]] for k in range(3))
    for k, expected in enumerate(((a + b) / 2, (b + c) / 2, (c + a) / 2)):
        assert torch.allclose(sub_v[0, centre[:, k]], expected)
    assert torch.equal(sub_v[:, : verts.shape[1]], verts)


def test_two_subdivision_levels_equal_two_single_levels_and_the_cached_topology():
    verts, faces = sphere(level=1)
    once_v, once_f = subdivide(*subdivide(verts, faces))
    twice_v, twice_f = subdivide(verts, faces, levels=2)
    assert torch.equal(once_f, twice_f) and torch.allclose(once_v, twice_v, atol=1e-5)
    cam = Camera(200.0, 200.0, 31.5, 31.5, 64, 64)
    renderer = SplatRenderer()
    first = renderer(verts, faces, cam, subdivisions=2)
    moved = renderer(verts + torch.tensor([2.0, 0.0, 0.0]), faces, cam, subdivisions=2)  # cache hit
    other = renderer(verts, faces[:, [0, 2, 1]], cam, subdivisions=2)  # other faces: rebuilt
    fresh = SplatRenderer()
    assert torch.equal(moved.depth, fresh(verts + torch.tensor([2.0, 0.0, 0.0]), faces, cam, subdivisions=2).depth)
    assert torch.equal(other.depth, fresh(verts, faces[:, [0, 2, 1]], cam, subdivisions=2).depth)
    assert not torch.equal(first.depth, moved.depth)


# ----------------------------------------------------------------------------- gradients
def small_mesh():
    cam = Camera(60.0, 60.0, 7.3, 6.8, 16, 14, dtype=torch.float64)
    verts = torch.tensor([[[-10.0, -8.0, 100.0], [12.0, -6.0, 104.0], [0.0, 10.0, 98.0], [8.0, 9.0, 110.0]]],
                         dtype=torch.float64)
    return verts, torch.tensor([[0, 2, 1], [1, 2, 3]]), cam


@pytest.mark.parametrize("output,kw", [
    ("silhouette", {}), ("depth", {}), ("soft_depth", {"soft_depth": True, "zfar": 200.0}),
])
def test_soft_rasterizer_gradcheck(output, kw):
    verts, faces, cam = small_mesh()
    w = torch.rand(1, 14, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = SoftRasterizer(SoftRasterizerSettings(sigma_px=1.0))
    fn = lambda v: (getattr(r(v, faces, cam, **kw), output) * w).sum()  # noqa: E731
    assert torch.autograd.gradcheck(fn, (verts.clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("output,subdivisions", [("silhouette", 0), ("silhouette", 1), ("depth", 1)])
def test_splat_renderer_gradcheck(output, subdivisions):
    verts, faces, cam = small_mesh()
    w = torch.rand(1, 14, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = SplatRenderer(SplatRenderSettings(radius_px=2.5, subdivisions=subdivisions))
    fn = lambda v: (getattr(r(v, faces, cam), output) * w).sum()  # noqa: E731
    assert torch.autograd.gradcheck(fn, (verts.clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_splat_depth_gradient_reaches_only_the_winning_vertices_z():
    cam = Camera(100.0, 100.0, 15.5, 15.5, 32, 32)
    verts = torch.tensor([[[0.0, 0.0, 500.0], [0.5, 0.0, 520.0], [40.0, 0.0, 500.0]]], requires_grad=True)
    out = SplatRenderer()(verts, torch.tensor([[0, 1, 2]]), cam, radius_px=3.0, subdivisions=0)
    (g,) = torch.autograd.grad(out.depth.sum(), verts)
    assert g[0, 0, 2] > 0 and g[0, 1, 2] == 0  # the farther vertex under the nearer one loses
    assert (g[..., :2] == 0).all()


def test_soft_silhouette_gradient_reaches_a_vertex_hidden_behind_another_face():
    cam = Camera(100.0, 100.0, 15.5, 15.5, 32, 32)
    # a large front square at z = 400 and a small triangle behind it (z = 450) whose corner
    # lies 0.7 px inside the square's outline
    z0, z1 = 400.0, 450.0
    s = 30.0  # half side, mm -> 7.5 px
    front = [[-s, -s, z0], [s, -s, z0], [s, s, z0], [-s, s, z0]]
    edge_u = s / z0 * 100.0  # px from the centre to the right edge
    x_hidden = (edge_u - 0.7) / 100.0 * z1
    back = [[x_hidden, 0.0, z1], [0.0, -5.0, z1], [0.0, 5.0, z1]]
    verts = torch.tensor([front + back], requires_grad=True)
    faces = torch.tensor([[0, 2, 1], [0, 3, 2], [4, 5, 6]])
    out = SoftRasterizer()(verts, faces, cam, sigma_px=0.5)
    u = cam.project(verts.detach())[0, 4]
    assert float(out.depth.detach()[0, int(round(float(u[1]))), int(round(float(u[0])))]) == pytest.approx(z0, abs=1e-3)
    (g,) = torch.autograd.grad(out.silhouette.sum(), verts)
    assert g[0, 4].abs().sum() > 0, "the hidden vertex got no silhouette gradient"
    # the exact rasterization (the hybrid counts pixel centres on an edge as covered, like
    # the soft rasterizer; PyTorch3D's strict test drops the 73 on this square's edges)
    hard = HybridRenderer()(verts.detach().requires_grad_(True), faces, cam, faces_per_pixel=1,
                            blend_covering_face=False, sigma_px=0.5)
    assert hard.mask.sum() == out.mask.sum()


# ----------------------------------------------------------------------------- settings
def test_soft_cull_backfaces_drops_only_the_back_faces_share_of_the_silhouette():
    # (that the mask and depth of a closed mesh stay the same is in the contract suite)
    verts, faces = sphere(level=3)
    cam = Camera(200.0, 200.0, 31.5, 31.5, 64, 64)
    full = SoftRasterizer()(verts, faces, cam)
    culled = SoftRasterizer()(verts, faces, cam, cull_backfaces=True)
    # back faces only add to the coverage; the covered pixels stay above one half
    assert (culled.silhouette <= full.silhouette + 1e-6).all()
    assert (culled.silhouette[culled.mask] >= 0.5).all()
    assert float((full.silhouette - culled.silhouette).abs().max()) > 0.1  # the back faces did count


def test_splat_subdivision_needs_faces_shared_by_the_batch():
    # the one departure of the splat from the (F, 3) or (B, F, 3) faces of the contract
    verts, faces = sphere(level=1)
    verts = verts.expand(2, -1, -1)
    cam = Camera(200.0, 200.0, 15.5, 15.5, 32, 32)
    with pytest.raises(ValueError, match=r"^faces must be \(F, 3\).*subdivisions > 0"):
        SplatRenderer()(verts, faces[None].expand(2, -1, -1), cam)
    assert SplatRenderer()(verts, faces[None].expand(2, -1, -1), cam, subdivisions=0).mask.any()


@pytest.mark.parametrize("cls,kw,name", [
    (SoftRasterizerSettings, {"sigma_px": 0.0}, "sigma_px"),
    (SoftRasterizerSettings, {"blur_eps": 0.7}, "blur_eps"),
    (SoftRasterizerSettings, {"gamma_mm": -1.0}, "gamma_mm"),
    (SoftRasterizerSettings, {"soft_depth": 1}, "soft_depth"),
    (SplatRenderSettings, {"radius_px": float("nan")}, "radius_px"),
    (SplatRenderSettings, {"subdivisions": -1}, "subdivisions"),
])
def test_bad_settings_raise_naming_the_field(cls, kw, name):
    with pytest.raises(ValueError, match=name):
        cls(**kw).validate()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_face_pixel_distances_match_the_reference_geometry(dtype):
    """FacePixelDistances' nearest edge, squared distance and inside flag against
    point_triangle_dist2 / covers, with pixel centres on corners and edges (ties between
    edges), and box_pixel_pairs against the boxes' pixel centres counted one by one."""
    from renderers._raster import FacePixelDistances, box_pixel_pairs, covers, edge_dist2, point_triangle_dist2

    g = torch.Generator().manual_seed(3)
    corners = (torch.rand(40, 3, 2, generator=g) * 12).to(dtype)
    corners[:10] = corners[:10].round()  # integer corners: centres on corners and edges
    corners[10] = corners[10, :1]  # a degenerate face
    lo, hi = corners.amin(1) - 1.0, corners.amax(1) + 1.0
    face, x, y = box_pixel_pairs(lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1], 10, 11)
    want = [(f, u, v) for f in range(40) for v in range(10) for u in range(11)
            if lo[f, 0] <= u <= hi[f, 0] and lo[f, 1] <= v <= hi[f, 1]]
    assert sorted(zip(face.tolist(), x.tolist(), y.tolist())) == sorted(want)
    p = torch.stack([x, y], -1).to(dtype)
    tri = corners.index_select(0, face)
    pairs = FacePixelDistances(corners, face, p)
    torch.testing.assert_close(pairs.d2, point_triangle_dist2(p, tri), rtol=1e-5, atol=1e-5)
    assert torch.equal(pairs.inside, covers(p, tri))
    per_edge = torch.stack([edge_dist2(p, tri[:, k], tri[:, (k + 1) % 3]) for k in range(3)], -1)
    assert torch.equal(pairs.edge, per_edge.argmin(-1)) or bool(
        (per_edge.gather(1, pairs.edge[:, None])[:, 0] - per_edge.amin(-1)).abs().max() < 1e-5)
    # a kept subset: the same per-pair values, and the analytic gradient of its distances
    # (the nearest edge's t and p - q, picked for the kept pairs only) matches autograd's
    # (on the random faces: no degenerate face, no centre equidistant from two edges)
    keep = torch.arange(0, face.shape[0], 3)
    keep = keep[face[keep] > 10]
    sub = pairs.select(keep)
    for name in ("d2", "inside", "edge", "t", "diff"):
        assert torch.equal(getattr(sub, name), getattr(pairs, name).index_select(0, keep)), name
    c1 = corners.clone().requires_grad_(True)
    c2 = corners.clone().requires_grad_(True)
    w = torch.rand(keep.shape[0], generator=g).to(dtype)
    (sub.dist2(c1) * w).sum().backward()
    (point_triangle_dist2(p[keep], c2.index_select(0, face[keep])) * w).sum().backward()
    torch.testing.assert_close(c1.grad, c2.grad, rtol=1e-4, atol=1e-4)
