"""The contract every registered renderer keeps, in one suite parametrized over the registry.

Each test runs for every name in ``sorted(renderers.RENDERERS)``, so a renderer registered
later is tested without editing this file. The contract (``renderers/__init__.py``,
``renderers.base.RenderOutput``)::

    renderer(verts (B, V, 3) mm OpenCV camera coords, faces (F, 3) or (B, F, 3), camera,
             **overrides) -> RenderOutput(silhouette (B, H, W) in [0, 1],
                                          depth (B, H, W) mm, 0 where mask is False,
                                          mask (B, H, W) bool, soft_depth None unless asked)

Covered here: output types, shapes, ranges, devices and dtypes; the pixel-centre convention;
coverage of a fronto-parallel square and of a closed mesh's interior; the depth of a slanted
plane; batches with per-element cameras and faces; gradients (finite, to the vertices from
the silhouette and the depth, to the intrinsics, dtype of verts); off-screen meshes;
per-call overrides and ``make_renderer`` settings; bad inputs. Settings that several
renderers share with one meaning (``sigma_px``, ``perspective_correct``, ``cull_backfaces``,
the NDC sigma units) are tested for every renderer whose settings have them. What only one
renderer does (parity with PyTorch3D on the hand, gradcheck, splat radii, tiling, ...) stays
in that renderer's own test file.

Where a renderer departs from the strict contract by design, its tolerance is in
:data:`TOLERANCES`, with the reason. CUDA cases skip without a GPU (``device`` fixture).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch
from pytorch3d.utils import ico_sphere

from renderers import RENDERERS, Camera, RenderOutput, check_mesh_inputs, make_renderer
from renderers.settings import NDCBlurMixin

NAMES = sorted(RENDERERS)


# ----------------------------------------------------------------------------- tolerances
@dataclass(frozen=True)
class Tolerance:
    """How far one renderer may depart from the strict contract, and why (see TOLERANCES).

    Members:
        edge_centres: pixel centres exactly on an edge shared by two faces are covered
            ("covered") or may be in neither face ("strict").
        outline_px: how far (px) the mask may reach beyond a polygon's outline.
        surface_depth_mm: |depth - true z of the surface| allowed on a slanted plane; None:
            depth is not the surface's z (that test is skipped, with the reason).
        per_element_faces: overrides needed to render (B, F, 3) faces.
        setting: a real setting and a value that widens the outline, for the override
            tests; None: no known setting (those tests are skipped).
        why: the reason a test is skipped for this renderer.
    """

    edge_centres: str = "covered"
    outline_px: float = 0.0
    surface_depth_mm: Optional[float] = 1e-3
    per_element_faces: dict = field(default_factory=dict)
    setting: Optional[tuple] = None
    why: str = ""


#: Per-renderer departures from the strict contract. A renderer missing here is held to the
#: strict one (the defaults of :class:`Tolerance`).
TOLERANCES = {
    "soft": Tolerance(setting=("sigma_px", 2.0)),
    "hybrid": Tolerance(setting=("sigma", 1e-2)),  # sigma_px = 2 at 40 px
    # PyTorch3D's hard pass tests "strictly inside": a pixel centre exactly on an edge that
    # two faces share lies in neither (module docstring of renderers.pytorch3d_renderer).
    # It rasterizes in float32: the slanted plane's depth is off by up to 1e-4 mm there.
    "pytorch3d": Tolerance(edge_centres="strict", setting=("sigma", 1e-2)),
    # The splat mask is where the splats of the outline vertices reach: about half a splat
    # radius beyond the outline (measured 3.7 px on the square of test_square_coverage_and_depth,
    # whose splats get 7.3 px from the radius rule after two subdivisions). Its depth is the
    # z of the nearest vertex splat, not the surface's (seed 001): on the 2-face slanted
    # plane that is tens of mm off, so its depth is checked against PyTorch3D on the
    # finely tessellated hand instead (tests/test_soft_and_splat_renderers.py). Subdivision
    # needs faces shared by the batch: (B, F, 3) faces only render with subdivisions = 0.
    "splat": Tolerance(
        outline_px=4.0,
        surface_depth_mm=None,
        per_element_faces={"subdivisions": 0},
        setting=("radius_scale", 2.0),
        why="splat depth is the nearest vertex's z, not the surface's",
    ),
}


def tol(name: str) -> Tolerance:
    return TOLERANCES.get(name, Tolerance())


def settings_fields(name: str) -> set:
    return {f.name for f in dataclasses.fields(RENDERERS[name][1])}


def with_setting(setting: str) -> list:
    """The registered renderers whose settings have a field ``setting``."""
    return [n for n in NAMES if setting in settings_fields(n)]


# ----------------------------------------------------------------------------- meshes
def sphere(level=1, radius=50.0, centre=(0.0, 0.0, 500.0), scale=(1.0, 1.0, 1.0),
           device="cpu", dtype=torch.float32):
    """(1, V, 3) mm and (F, 3) long faces of an ico-sphere (counter-clockwise from outside)."""
    m = ico_sphere(level)
    verts = m.verts_padded() * radius * torch.tensor(scale) + torch.tensor(centre)
    return verts.to(device=device, dtype=dtype), m.faces_padded()[0].to(device)


def quad(u0, v0, u1, v1, cam, z=500.0, device="cpu", dtype=torch.float32):
    """A fronto-parallel rectangle at depth z whose corners project to (u0, v0) and (u1, v1),
    two faces split along that diagonal, facing the camera."""
    fx, fy, cx, cy = (float(getattr(cam, n)[0]) for n in ("fx", "fy", "cx", "cy"))
    x = lambda u: (u - cx) / fx * z  # noqa: E731
    y = lambda v: (v - cy) / fy * z  # noqa: E731
    verts = torch.tensor([[[x(u0), y(v0), z], [x(u1), y(v0), z], [x(u1), y(v1), z], [x(u0), y(v1), z]]],
                         device=device, dtype=dtype)
    return verts, torch.tensor([[0, 2, 1], [0, 3, 2]], device=device)


def tiny_triangle(u, v, cam, r=0.2, z=500.0, device="cpu", dtype=torch.float32):
    """A triangle of "radius" r px around the point that projects to (u, v)."""
    fx, fy, cx, cy = (float(getattr(cam, n)[0]) for n in ("fx", "fy", "cx", "cy"))
    x, y = (u - cx) / fx * z, (v - cy) / fy * z
    dx, dy = r / fx * z, r / fy * z
    verts = torch.tensor([[[x - dx, y - dy, z], [x + dx, y - dy, z], [x, y + dy, z]]],
                         device=device, dtype=dtype)
    return verts, torch.tensor([[0, 2, 1]], device=device)


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("name", NAMES)
class TestOutputs:
    def test_types_shapes_ranges(self, name, device, dtype):
        verts, faces = sphere(level=2, device=device, dtype=dtype)
        verts = torch.cat([verts, verts + torch.tensor([8.0, -5.0, 40.0], device=device, dtype=dtype)])
        cam = Camera(160.0, 160.0, 23.5, 19.5, 48, 40, device=device, dtype=dtype)
        out = make_renderer(name)(verts, faces, cam)
        assert isinstance(out, RenderOutput) and out.soft_depth is None  # not asked for
        assert out.silhouette.shape == out.depth.shape == out.mask.shape == (2, 40, 48)
        assert out.silhouette.dtype == out.depth.dtype == dtype and out.mask.dtype == torch.bool
        assert out.silhouette.device == out.depth.device == out.mask.device == verts.device
        assert float(out.silhouette.min()) >= 0.0 and float(out.silhouette.max()) <= 1.0
        assert (out.depth[~out.mask] == 0).all()
        for b in range(2):
            z = verts[b, :, 2]
            d = out.depth[b][out.mask[b]]
            assert d.numel() > 200
            assert (d >= z.min() - 1e-3).all() and (d <= z.max() + 1e-3).all()
            assert (d <= z.mean() + 1e-3).all()  # the nearest surface: the front half (z <= centre)

    def test_float64_matches_float32(self, name, device):
        verts, faces = sphere(level=1, scale=(1.0, 0.8, 0.9), centre=(3.0, -4.0, 500.0), device=device)
        cam = Camera(200.0, 200.0, 15.5, 15.5, 32, 32, device=device)
        out32 = make_renderer(name)(verts, faces, cam)
        out64 = make_renderer(name)(verts.double(), faces, cam.to(dtype=torch.float64))
        assert out64.silhouette.dtype == out64.depth.dtype == torch.float64
        assert torch.equal(out32.mask, out64.mask)
        assert torch.allclose(out32.silhouette.double(), out64.silhouette, atol=1e-5)
        assert torch.allclose(out32.depth.double(), out64.depth, atol=1e-3)  # float32 spacing at 500 mm: 3e-5


# ----------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("name", NAMES)
def test_pixel_centre_convention_row_is_v_col_is_u(name, device):
    # Non-square image; a 0.2 px triangle around (u, v) = (j, i) lights exactly pixel
    # [row i, col j]; one around the pixel corner (10.5, 5.5) lights none.
    cam = Camera(100.0, 120.0, 11.3, 7.6, 24, 16, device=device)
    r = make_renderer(name)
    for u, v in [(10, 5), (3, 12), (23, 0)]:
        verts, faces = tiny_triangle(u, v, cam, device=device)
        assert cam.project(verts).mean(1).round().tolist() == [[u, v]]
        out = r(verts, faces, cam)
        assert out.mask[0].nonzero().tolist() == [[v, u]]
        assert out.silhouette[0].argmax().item() == v * 24 + u
        assert abs(out.depth[0, v, u].item() - 500.0) < 1e-3
    assert r(*tiny_triangle(10.5, 5.5, cam, device=device), cam).mask.sum() == 0


@pytest.mark.parametrize("name", NAMES)
def test_square_coverage_and_depth(name):
    # Corners at (9.7, 9.7) and (30.3, 30.3): the pixel centres 10..30 in both directions
    # are inside, those on the diagonal u = v lie exactly on the edge the two faces share.
    t = tol(name)
    cam = Camera(250.0, 250.0, 20.0, 20.0, 40, 40)
    verts, faces = quad(9.7, 9.7, 30.3, 30.3, cam)
    out = make_renderer(name)(verts, faces, cam)
    mask = out.mask[0]
    inside = torch.zeros(40, 40, dtype=torch.bool)
    inside[10:31, 10:31] = True
    c = torch.arange(40.0)
    near = (c >= 9.7 - t.outline_px) & (c <= 30.3 + t.outline_px)
    allowed = near[:, None] & near[None, :]
    assert not (mask & ~allowed).any(), "the mask reaches too far beyond the outline"
    if t.edge_centres == "covered":
        assert mask[inside].all()
    else:
        assert mask[inside & ~torch.eye(40, dtype=torch.bool)].all()
    assert (out.silhouette[0][inside] > 0.5).all()
    assert torch.allclose(out.depth[0][mask], torch.tensor(500.0), atol=1e-3)
    assert (out.depth[0][~mask] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_closed_mesh_covers_its_interior_and_nothing_far(name):
    verts, faces = sphere(level=2)
    cam = Camera(200.0, 200.0, 31.5, 31.5, 64, 64)
    out = make_renderer(name)(verts, faces, cam)
    normals = (verts[0] - torch.tensor([0.0, 0.0, 500.0])) / 50.0
    view = verts[0] / verts[0].norm(dim=-1, keepdim=True)
    front = (normals * view).sum(-1) < -0.5  # well inside the contour (radius ~20 px)
    uv = cam.project(verts)[0][front].round().long()
    assert len(uv) > 30
    assert (out.silhouette[0, uv[:, 1], uv[:, 0]] > 0.5).all()
    assert out.mask[0, uv[:, 1], uv[:, 0]].all()
    assert out.silhouette[0, :5].max() < 1e-3 and not out.mask[0, :5].any()


def _slanted_plane():
    """A plane from z = 300 to 800 mm filling a 32 px image, and the true z at each pixel
    centre: the ray-plane intersection z = c / (n . d), d = ((u - cx)/fx, (v - cy)/fy, 1)."""
    cam = Camera(60.0, 60.0, 15.5, 15.5, 32, 32, dtype=torch.float64)
    verts = torch.tensor([[[-200.0, -150.0, 300.0], [250.0, -150.0, 800.0],
                           [250.0, 200.0, 800.0], [-200.0, 200.0, 300.0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])
    n = torch.cross(verts[0, 1] - verts[0, 0], verts[0, 3] - verts[0, 0], dim=-1)
    v, u = torch.meshgrid(torch.arange(32.0, dtype=torch.float64), torch.arange(32.0, dtype=torch.float64),
                          indexing="ij")
    d = torch.stack([(u - 15.5) / 60.0, (v - 15.5) / 60.0, torch.ones_like(u)], dim=-1)
    return verts, faces, cam, (n * verts[0, 0]).sum() / (d * n).sum(-1)


@pytest.mark.parametrize("name", [
    n if tol(n).surface_depth_mm is not None else pytest.param(n, marks=pytest.mark.skip(reason=tol(n).why))
    for n in NAMES
])
def test_depth_is_the_surface_z_on_a_slanted_plane(name):
    verts, faces, cam, z = _slanted_plane()
    out = make_renderer(name)(verts, faces, cam)
    m = out.mask[0]
    assert m.sum() > 900
    assert (out.depth[0][m] - z[m]).abs().max() <= tol(name).surface_depth_mm
    if "perspective_correct" in settings_fields(name):
        # z interpolated linearly in the image is millimetres off here
        lin = make_renderer(name)(verts, faces, cam, perspective_correct=False)
        assert (lin.depth[0][m] - z[m]).abs().max() > 1.0


# ----------------------------------------------------------------------------- batches
@pytest.mark.parametrize("name", NAMES)
def test_batch_with_per_element_cameras_and_faces_equals_single_renders(name, device):
    verts, faces = sphere(level=1, device=device)
    verts = torch.cat([verts, verts + torch.tensor([6.0, -5.0, 60.0], device=device)])
    cams = Camera.cat([Camera(200.0, 200.0, 15.5, 15.5, 32, 32, device=device),
                       Camera(150.0, 160.0, 18.0, 14.0, 32, 32, device=device)])
    r = make_renderer(name)
    batch = r(verts, faces, cams)
    for b in range(2):
        one = r(verts[b:b + 1], faces, cams[b])
        assert torch.equal(batch.mask[b], one.mask[0])
        assert torch.allclose(batch.silhouette[b], one.silhouette[0], atol=1e-6)
        assert torch.allclose(batch.depth[b], one.depth[0], atol=1e-4)
    # one camera of batch size 1 serves every element
    shared = r(verts, faces, cams[0])
    assert torch.equal(shared.mask[0], batch.mask[0]) and not torch.equal(shared.mask[1], batch.mask[1])
    # (B, F, 3) faces equal the shared (F, 3) faces
    kw = tol(name).per_element_faces
    per_element = r(verts, faces[None].expand(2, -1, -1), cams, **kw)
    reference = r(verts, faces, cams, **kw) if kw else batch
    assert torch.equal(per_element.mask, reference.mask)
    assert torch.allclose(per_element.silhouette, reference.silhouette, atol=1e-6)
    assert torch.allclose(per_element.depth, reference.depth, atol=1e-4)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_verts_and_intrinsics(name, device, dtype):
    verts, faces = sphere(level=1, device=device, dtype=dtype)
    verts.requires_grad_(True)
    fx = torch.tensor([200.0], device=device, dtype=dtype, requires_grad=True)
    out = make_renderer(name)(verts, faces, Camera(fx, 200.0, 15.5, 15.5, 32, 32))
    g_sil, g_fx = torch.autograd.grad(out.silhouette.sum(), (verts, fx), retain_graph=True)
    (g_depth,) = torch.autograd.grad(out.depth.sum(), verts)
    assert g_sil.dtype == g_depth.dtype == dtype
    assert torch.isfinite(g_sil).all() and g_sil.abs().sum() > 0 and g_fx.abs() > 0
    assert torch.isfinite(g_depth).all() and g_depth[..., 2].abs().sum() > 0
    # growing the sphere grows its silhouette: the gradient along the radial direction is > 0
    radial = verts.detach() - torch.tensor([0.0, 0.0, 500.0], device=device, dtype=dtype)
    assert (g_sil * radial).sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_off_screen_mesh_renders_empty_and_backward_works(name, device):
    verts, faces = sphere(level=1, centre=(5000.0, 0.0, 500.0), device=device)
    verts.requires_grad_(True)
    out = make_renderer(name)(verts, faces, Camera(200.0, 200.0, 15.5, 15.5, 32, 32, device=device))
    assert not out.mask.any() and out.silhouette.abs().sum() == 0 and out.depth.abs().sum() == 0
    (out.silhouette.sum() + out.depth.sum()).backward()
    assert verts.grad is not None and torch.isfinite(verts.grad).all() and (verts.grad == 0).all()


# ----------------------------------------------------------------------------- settings
def _needs_setting(name):
    if tol(name).setting is None:
        pytest.skip(f"no real setting of {name!r} known: add one to TOLERANCES")
    return tol(name).setting


@pytest.mark.parametrize("name", NAMES)
def test_per_call_override_applies_for_that_call_only(name):
    key, value = _needs_setting(name)
    cam = Camera(250.0, 250.0, 20.0, 20.0, 40, 40)
    verts, faces = quad(9.7, 9.7, 30.3, 30.3, cam)
    r = make_renderer(name)
    before = getattr(r.settings, key)
    plain = r(verts, faces, cam)
    over = r(verts, faces, cam, **{key: value})
    built = make_renderer(name, **{key: value})(verts, faces, cam)
    assert getattr(r.settings, key) == before  # the override did not stick
    assert getattr(make_renderer(name, **{key: value}).settings, key) == value
    assert torch.equal(over.silhouette, built.silhouette) and torch.equal(over.mask, built.mask)
    assert torch.equal(over.depth, built.depth)
    outside = torch.ones(40, 40, dtype=torch.bool)
    outside[6:35, 6:35] = False  # 3.7 px or more outside the square
    assert float(over.silhouette[0][outside].sum()) > float(plain.silhouette[0][outside].sum()) + 0.1
    with pytest.raises(ValueError, match=key):
        r(verts, faces, cam, **{key: -1.0})  # out of range
    with pytest.raises(ValueError, match=key):
        make_renderer(name, **{key: -1.0})


@pytest.mark.parametrize("name", NAMES)
def test_unknown_override_raises_listing_the_valid_names(name):
    cam = Camera(100.0, 100.0, 7.5, 7.5, 16, 16)
    verts, faces = sphere(level=0)
    r = make_renderer(name)
    with pytest.raises(ValueError, match="unknown setting override") as err:
        r(verts, faces, cam, colour=1)
    assert "colour" in str(err.value)
    assert all(f in str(err.value) for f in settings_fields(name))
    # a setting of another registered renderer is no setting of this one
    others = sorted(set().union(*(settings_fields(n) for n in NAMES)) - settings_fields(name))
    if others:
        with pytest.raises(ValueError, match=f"unknown setting override.*{others[0]}"):
            r(verts, faces, cam, **{others[0]: 1})


@pytest.mark.parametrize("name", NAMES)
def test_make_renderer_unknown_setting_and_wrong_settings_type_raise(name):
    cls, settings_cls = RENDERERS[name]
    assert type(make_renderer(name)) is cls and isinstance(make_renderer(name).settings, settings_cls)
    with pytest.raises(ValueError, match=f"renderer {name!r}.*colour"):
        make_renderer(name, colour=1)
    others = sorted(set().union(*(settings_fields(n) for n in NAMES)) - settings_fields(name))
    if others:
        with pytest.raises(ValueError, match=f"renderer {name!r}"):
            make_renderer(name, **{others[0]: 1})
    for other in NAMES:
        if RENDERERS[other][1] is not settings_cls:
            with pytest.raises(ValueError, match=f"settings must be a {settings_cls.__name__}"):
                cls(RENDERERS[other][1]())


def test_registry_names():
    assert {"pytorch3d", "hybrid", "soft", "splat"} <= set(RENDERERS)
    with pytest.raises(ValueError, match="renderer must be one of"):
        make_renderer("opengl")


# Settings that several renderers share, with the same name and meaning.
@pytest.mark.parametrize("name", with_setting("sigma_px"))
def test_sigma_px_is_the_blur_in_pixels(name):
    # A pixel centre r px outside the middle of a long straight edge (the other face far
    # away) has silhouette sigmoid(-(r / sigma_px)^2), at any image size.
    for H, W in ((48, 64), (96, 80)):
        cam = Camera(250.0, 250.0, W / 2.0, H / 2.0, W, H)
        verts, faces = quad(5.0, 5.0, 30.3, 40.0, cam)  # right edge at u = 30.3
        out = make_renderer(name)(verts, faces, cam, sigma_px=0.5)
        expected = 1.0 / (1.0 + math.exp((0.7 / 0.5) ** 2))  # pixel column 31, r = 0.7
        assert abs(out.silhouette[0, 22, 31].item() - expected) < 1e-4


@pytest.mark.parametrize("name", [n for n in NAMES if issubclass(RENDERERS[n][1], NDCBlurMixin)])
def test_ndc_sigma_units(name):
    # PyTorch3D's sigma is a squared NDC distance; the shorter image side spans 2 NDC units.
    settings_cls = RENDERERS[name][1]
    s = settings_cls()
    assert s.sigma == 1e-4
    assert abs(s.sigma_in_pixels(64, 64) - 0.32) < 1e-9
    assert abs(s.sigma_in_pixels(128, 200) - 0.64) < 1e-9
    assert abs(settings_cls(sigma_px=0.5).sigma_ndc(48, 64) - (1.0 / 48) ** 2) < 1e-15
    assert abs(s.blur_radius(64, 64) - math.log(1e4 - 1) * 1e-4) < 1e-12
    assert abs(s.blur_radius_px(64, 64) - 0.32 * math.sqrt(math.log(1e4 - 1))) < 1e-9


@pytest.mark.parametrize("name", with_setting("cull_backfaces"))
def test_cull_backfaces_uses_image_winding(name):
    # (0, 0) -> (1, 0) -> (0, 1) in (u, v) is clockwise as displayed (v down): culled.
    cam = Camera(100.0, 100.0, 10.0, 10.0, 20, 20)
    r = make_renderer(name, cull_backfaces=True)
    cw = torch.tensor([[[-5.0, -5.0, 100.0], [5.0, -5.0, 100.0], [-5.0, 5.0, 100.0]]])
    f = torch.tensor([[0, 1, 2]])
    culled = r(cw, f, cam)
    assert culled.mask.sum() == 0 and culled.silhouette.max() == 0
    assert r(cw, f, cam, cull_backfaces=False).mask.sum() > 0
    assert r(cw, f.flip(-1), cam).mask.sum() > 0
    # a closed, outward-facing mesh keeps its mask and depth
    verts, faces = sphere(level=2)
    cam = Camera(200.0, 200.0, 31.5, 31.5, 64, 64)
    full, front = make_renderer(name)(verts, faces, cam), r(verts, faces, cam)
    assert torch.equal(full.mask, front.mask) and torch.allclose(full.depth, front.depth)


# ----------------------------------------------------------------------------- bad inputs
def _bad_input(case):
    """verts, faces, camera for one bad-input case (all else valid)."""
    verts, faces = sphere(level=0)
    cam = Camera(100.0, 100.0, 7.5, 7.5, 16, 16)
    V = verts.shape[1]
    if case == "verts_1d":
        verts = verts.reshape(-1)
    elif case == "verts_no_batch":
        verts = verts[0]
    elif case == "verts_xy":
        verts = verts[..., :2]
    elif case == "verts_int":
        verts = verts.long()
    elif case == "verts_empty":
        verts = verts[:, :0]
    elif case in ("verts_nan", "verts_inf"):
        verts = verts.clone()
        verts[0, 2, 0] = float("nan") if case == "verts_nan" else float("inf")
    elif case == "z_zero":
        verts = verts.clone()
        verts[0, 3, 2] = 0.0
    elif case == "z_negative":
        verts = verts - torch.tensor([0.0, 0.0, 1000.0])
    elif case in ("faces_past_the_end", "faces_negative"):
        faces = faces.clone()
        faces[0, 0] = V if case == "faces_past_the_end" else -1
    elif case == "faces_float":
        faces = faces.float()
    elif case == "faces_empty":
        faces = faces[:0]
    elif case == "faces_quads":
        faces = torch.cat([faces, faces[:, :1]], dim=1)
    elif case == "faces_wrong_batch":
        faces = faces[None].expand(2, -1, -1)
    elif case == "camera_batch":
        verts = verts.expand(2, -1, -1)
        cam = cam.expand(3)
    elif case == "camera_type":
        cam = cam.K
    else:
        raise AssertionError(case)
    return verts, faces, cam


#: (case, the argument the message must start with, a fragment of what it must say)
BAD_INPUTS = [
    ("verts_1d", "verts", "shape (B, V, 3)"),
    ("verts_no_batch", "verts", "shape (B, V, 3)"),
    ("verts_xy", "verts", "shape (B, V, 3)"),
    ("verts_int", "verts", "floating"),
    ("verts_empty", "verts", "V >= 1"),
    ("verts_nan", "verts", "finite"),
    ("verts_inf", "verts", "finite"),
    ("z_zero", "verts", "in front of the camera"),
    ("z_negative", "verts", "in front of the camera"),
    ("faces_past_the_end", "faces", "must index vertices in [0, 12)"),
    ("faces_negative", "faces", "must index vertices"),
    ("faces_float", "faces", "integer"),
    ("faces_empty", "faces", "at least one face"),
    ("faces_quads", "faces", "shape (F, 3) or (B, F, 3)"),
    ("faces_wrong_batch", "faces", "B = 1"),
    ("camera_batch", "camera", "batch size 3"),
    ("camera_type", "camera", "renderers.Camera"),
]


@pytest.mark.parametrize("case, arg, what", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_naming_the_argument(name, case, arg, what):
    verts, faces, cam = _bad_input(case)
    with pytest.raises(ValueError, match=rf"^{arg}\b.*{re.escape(what)}"):
        make_renderer(name)(verts, faces, cam)


@pytest.mark.parametrize("case, arg, what", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_check_mesh_inputs(case, arg, what):
    with pytest.raises(ValueError, match=rf"^{arg}\b.*{re.escape(what)}"):
        check_mesh_inputs(*_bad_input(case))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", NAMES)
def test_inputs_on_different_devices_raise(name):
    verts, faces = sphere(level=0, device="cuda")
    cam = Camera(100.0, 100.0, 7.5, 7.5, 16, 16)
    r = make_renderer(name)
    with pytest.raises(ValueError, match="^camera is on"):
        r(verts, faces, cam)
    with pytest.raises(ValueError, match="^faces is on"):
        r(verts, faces.cpu(), cam.to("cuda"))
