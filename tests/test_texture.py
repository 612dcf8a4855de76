"""UV atlas, texture extraction (fitting.texture), the NCC texture energy and `handfit texture`."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from fitting import InputError
from fitting.uv_atlas import texel_density, uv_atlas
from hands import HandModel


# -- UV atlas --------------------------------------------------------------------------------
def test_default_atlas_own_uvs_charts_and_texel_map(hand_model):
    atlas = uv_atlas(hand_model)
    assert atlas.source == "model" and atlas.num_charts == 1
    assert atlas.uv.min() >= 0 and atlas.uv.max() <= 1
    tm = atlas.texel_map(64)
    covered = tm.covered
    assert 0.3 < covered.float().mean() < 0.45  # the used part of the layout fills the square
    assert torch.equal(tm.chart >= 0, covered)
    # the barycentric coordinates of every covered texel give back its centre's UV
    face, bary = tm.face[covered], tm.bary[covered].double()
    uv = (atlas.uv.double()[atlas.face_uvs[face]] * bary[..., None]).sum(1)
    ii, jj = torch.nonzero(covered, as_tuple=True)
    centre = torch.stack([(jj + 0.5) / 64, 1 - (ii + 0.5) / 64], -1).double()
    assert (uv - centre).abs().max() < 1.0 / 64


def test_texel_density_scales_with_the_texture_area(hand_model):
    atlas = uv_atlas(hand_model)
    d512, d1024 = texel_density(atlas, hand_model.v_template, 512), texel_density(atlas, hand_model.v_template, 1024)
    assert d1024 == pytest.approx(4 * d512)
    assert 1.0 < d512 < 10.0  # texels per mm^2 of the canonical hand
    raw = uv_atlas(hand_model, fit_to_square=False)  # the whole-body layout: a far lower density
    assert texel_density(raw, hand_model.v_template, 512) < d512 / 10


def test_model_without_uvs_is_an_input_error_unless_unwrapped(hand_data):
    bare = dataclasses.replace(hand_data, uv_coords=torch.zeros(0, 2),
                               face_uvs=torch.zeros_like(hand_data.faces), source="no-uv test hand")
    with pytest.raises(InputError, match="no texture coordinates.*unwrap"):
        uv_atlas(bare)
    pytest.importorskip("xatlas")
    atlas = uv_atlas(bare, unwrap="auto")
    assert atlas.source == "xatlas" and atlas.num_charts > 1
    assert atlas.face_uvs.shape == hand_data.faces.shape and atlas.uv.min() >= 0 and atlas.uv.max() <= 1
    # texels of different charts never share a texel; every chart has texels at 128
    tm = atlas.texel_map(128)
    assert set(torch.unique(tm.chart[tm.covered]).tolist()) <= set(range(atlas.num_charts))


# -- texture extraction ----------------------------------------------------------------------
from fitting.synthetic import orbit_views, render_textured, uv_pattern  # noqa: E402
from fitting.texture import (TextureAccumulator, TextureFrame, extract_texture, smoothed_noise,  # noqa: E402
                             texture_energy, unwrap_texture)
from losses import texture_ncc_loss  # noqa: E402
from renderers import Camera  # noqa: E402

SIZE = 128       # texels per side
RES = 96         # render side, px
ANGLES = (-60.0, 0.0, 60.0)


def psnr(a, b):
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def scene(hand_model):
    """The default hand in a known pose, palm to the camera, seen from 3 views (96 px), and its
    known texture rendered through PyTorch3D's TexturesUV."""
    atlas = uv_atlas(hand_model)
    p = hand_model.neutral_parameters(1)
    p["transl"] = torch.tensor([[0.0, 0.0, 400.0]])
    p["theta"] = 0.2 * hand_model.dof_upper[None]
    with torch.no_grad():
        vertices = hand_model(**p).vertices
    f = 250.0 * RES / 128
    camera = Camera(f, f, (RES - 1) / 2, (RES - 1) / 2, RES, RES)
    views = orbit_views(vertices, ANGLES)
    texture = uv_pattern(SIZE)
    rgb = render_textured(views, atlas.faces, atlas.uv, atlas.face_uvs, texture, camera)
    return dict(atlas=atlas, camera=camera, views=views, texture=texture, rgb=rgb, params=p)


def test_round_trip_psnr_and_never_seen_texels(scene):
    atlas, texture = scene["atlas"], scene["texture"]
    acc = TextureAccumulator(atlas, SIZE)
    weight = acc.add(scene["rgb"], scene["camera"], scene["views"])
    covered = atlas.texel_map(SIZE).covered
    seen, confidence = acc.seen, acc.confidence()
    assert not (seen & ~covered).any()
    assert 0.2 < seen[covered].float().mean() < 0.8  # the back of the hand is never seen
    out = acc.texture()
    assert out.shape == (3, SIZE, SIZE) and 0 <= out.min() and out.max() <= 1
    assert psnr(out[:, seen], texture[:, seen]) >= 25.0
    # never-seen texels: confidence exactly 0, seen ones > 0; the filled texture keeps seen texels
    assert torch.equal(confidence > 0, seen) and torch.equal(weight > 0, seen)
    assert torch.allclose(out[:, seen], acc.texture(fill=False)[:, seen])
    # every texel is filled (no black holes) and unseen ones with colours of their own chart
    assert out[:, covered & ~seen].sum(0).min() > 0.1
    # a texel whose surface faces away from every camera is never seen
    tm = atlas.texel_map(SIZE)
    from pytorch3d.structures import Meshes
    for b in range(len(ANGLES)):
        n = Meshes(scene["views"][b:b + 1], atlas.faces[None]).faces_normals_padded()[0]
        centre = scene["views"][b][atlas.faces].mean(1)
        faces_camera = (n * centre).sum(-1) < 0
        away = ~faces_camera[tm.face.clamp(min=0)] & covered
        if b == 0:
            away_all = away
        else:
            away_all &= away
    assert away_all.sum() > 100 and not seen[away_all].any()


def test_unwrap_follows_dtype_and_differentiates_in_the_vertices(scene):
    v = scene["views"][1:2].double().requires_grad_(True)
    out = unwrap_texture(scene["rgb"][1:2].double(), v, scene["camera"], scene["atlas"], 64)
    assert out.colour.dtype == torch.float64 and out.weight.dtype == torch.float64
    assert out.colour.shape == (1, 3, 64, 64) and out.weight.shape == (1, 64, 64)
    (out.colour * out.weight[:, None]).sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_accumulator_follows_the_device_and_dtype_of_its_inputs(scene, device, dtype):
    views = scene["views"][1:2].to(device=device, dtype=dtype)
    acc = TextureAccumulator(scene["atlas"], 64)
    acc.add(scene["rgb"][1].to(device=device, dtype=dtype), scene["camera"].to(device, dtype), views)
    assert acc.colour.device.type == device.type and acc.colour.dtype == dtype
    texture, confidence = acc.texture(), acc.confidence()
    assert texture.device.type == device.type and texture.dtype == dtype and confidence.dtype == dtype
    loss = texture_energy(scene["rgb"][1:2].to(device=device, dtype=dtype), views, scene["camera"].to(device, dtype),
                          scene["atlas"], texture, confidence)
    assert loss.device.type == device.type and loss.dtype == dtype and float(loss) < 0.2


def test_soft_rasterizer_gives_the_same_visibility(scene):
    from fitting.texture import TextureSettings
    args = (scene["rgb"], scene["views"], scene["camera"], scene["atlas"], SIZE)
    p3d = unwrap_texture(*args)
    soft = unwrap_texture(*args, settings=TextureSettings(rasterizer="soft"))
    seen_p3d, seen_soft = p3d.weight > 0, soft.weight > 0
    assert (seen_p3d ^ seen_soft).float().sum() <= 0.01 * seen_p3d.float().sum()
    assert (p3d.weight - soft.weight).abs().max() < 0.5 and (p3d.weight - soft.weight).abs().mean() < 1e-3
    with pytest.raises(ValueError, match="rasterizer"):
        TextureSettings(rasterizer="nope").validate()


def test_smoothing_lowers_the_noise_as_the_factor_predicts(scene):
    g = torch.Generator().manual_seed(3)
    rgb, camera, views = scene["rgb"][1:2], scene["camera"], scene["views"][1:2]
    clean = TextureAccumulator(scene["atlas"], SIZE)
    clean.add(rgb, camera, views)
    seen = clean.seen
    sigma, frames = 0.05, 10
    acc = TextureAccumulator(scene["atlas"], SIZE)  # the paper's factor, 0.5
    noise = []
    for t in range(frames):
        acc.add(rgb + sigma * torch.randn(rgb.shape, generator=g), camera, views)
        noise.append(float((acc.texture(fill=False) - clean.texture(fill=False))[:, seen].std()))
    ratio = noise[-1] / noise[0]
    assert ratio == pytest.approx(smoothed_noise(1.0, frames), rel=0.1)  # 0.577: 1/sqrt(3)
    assert noise[1] / noise[0] == pytest.approx(smoothed_noise(1.0, 2), rel=0.1)
    assert smoothed_noise(1.0, 1) == 1.0 and smoothed_noise(1.0, 50, smoothing=1.0) == 1.0


def test_extract_texture_writes_loadable_meshes_and_resumes(scene, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    atlas, camera = scene["atlas"], scene["camera"]
    frames = [TextureFrame(f"f{b}", scene["rgb"][b], camera, scene["views"][b]) for b in range(3)]
    out = tmp_path / "tex"
    first = extract_texture(frames[:2], out, atlas, size=SIZE, progress=False)
    assert first.added == ["f0", "f1"] and first.resumed == []
    again = extract_texture(frames, out, atlas, size=SIZE, progress=False)  # a rerun continues
    assert again.added == ["f2"] and again.resumed == ["f0", "f1"]
    whole = extract_texture(frames, tmp_path / "whole", atlas, size=SIZE, progress=False)
    import imageio.v3 as iio
    resumed_png, whole_png = iio.imread(out / "texture.png"), iio.imread(tmp_path / "whole" / "texture.png")
    assert np.abs(resumed_png.astype(int) - whole_png).max() <= 1
    confidence = iio.imread(out / "confidence.png")
    assert confidence.shape == (SIZE, SIZE) and confidence.max() > 200 and (confidence == 0).mean() > 0.5
    for name in ("hand.glb", "hand.obj"):
        loaded = trimesh.load(out / name)
        mesh = next(iter(loaded.geometry.values())) if isinstance(loaded, trimesh.Scene) else loaded
        assert mesh.visual.kind == "texture" and mesh.visual.uv.shape == (len(mesh.vertices), 2)
        material = mesh.visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        assert image is not None and image.size == (SIZE, SIZE)
        assert np.abs(np.asarray(image.convert("RGB")).astype(int) - resumed_png).max() <= 1
        assert len(mesh.faces) == atlas.faces.shape[0]
    with pytest.raises(InputError, match="another run"):
        extract_texture(frames, out, atlas, size=64, progress=False)


def test_bad_input_is_a_one_line_input_error(scene):
    acc = TextureAccumulator(scene["atlas"], SIZE)
    small = scene["rgb"][:1, :, :64, :80]
    with pytest.raises(InputError, match=r"RGB image is 80x64 but its camera is for a 96x96 image"):
        acc.add(small, scene["camera"], scene["views"][:1])
    with pytest.raises(InputError, match="vertices"):
        acc.add(scene["rgb"][:1], scene["camera"], scene["views"][:1, :100])
    with pytest.raises(InputError, match="views"):
        acc.add(scene["rgb"][:2], scene["camera"], scene["views"][:1])


# -- the NCC texture energy ------------------------------------------------------------------
def test_ncc_loss_gradcheck_mask_and_illumination_invariance():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64)
    m = torch.rand(2, 16, 16, generator=g) > 0.3
    assert torch.autograd.gradcheck(lambda x: texture_ncc_loss(x, r[:, :1], m[:1], patch_size=8, blur_size=3),
                                    (t[:1, :1].detach().clone().requires_grad_(True),))
    loss = texture_ncc_loss(t, r, m)
    assert loss.shape == (2,) and loss.dtype == torch.float64 and (loss > 0.3).all()
    # texels outside the mask change nothing; a per-image gain and offset change almost nothing
    t2 = t.detach().clone()
    t2[~m[:, None].expand_as(t2)] = 0.0
    blur1 = dict(blur_size=1)
    assert torch.allclose(texture_ncc_loss(t2, r, m, **blur1), texture_ncc_loss(t.detach(), r, m, **blur1))
    same = texture_ncc_loss(0.6 * r.expand(2, -1, -1, -1) + 0.3, r, m)
    assert (same < 0.05).all()
    with pytest.raises(ValueError, match="patch_size"):
        texture_ncc_loss(t, r, m, patch_size=6)
    with pytest.raises(ValueError, match="mask"):
        texture_ncc_loss(t, r, m[:1])


def test_texture_energy_is_lowest_at_the_true_pose(scene):
    """The differentiable unwrap + NCC against the true texture: a shifted mesh costs more and
    the gradient in the shift points back."""
    view = slice(1, 2)
    rgb, camera, v = scene["rgb"][view], scene["camera"], scene["views"][view]
    shift = torch.tensor([3.0, 0.0, 0.0], requires_grad=True)
    energy = texture_energy(rgb, v + shift, camera, scene["atlas"], scene["texture"])
    energy.sum().backward()
    true = texture_energy(rgb, v, camera, scene["atlas"], scene["texture"])
    assert float(true) < float(energy.detach())
    assert float(shift.grad[0]) > 0  # descent moves the shift back towards 0


# -- handfit texture ---------------------------------------------------------------------------
def _write_fits(scene, folder, names):
    """fit-sequence-style output folders (params.json with the camera, result.npz with the vertices)."""
    import json
    from fitting.io import camera_to_dict
    for b, name in enumerate(names):
        d = folder / name
        d.mkdir(parents=True)
        np.savez(d / "result.npz", vertices=scene["views"][b].numpy(), faces=scene["atlas"].faces.numpy())
        (d / "params.json").write_text(json.dumps({"name": name, "camera": camera_to_dict(scene["camera"])}))


def test_cli_texture_extracts_from_fits_and_rejects_bad_input(scene, tmp_path, capsys):
    import imageio.v3 as iio
    from fitting.cli import main
    rgb_dir, fits = tmp_path / "rgb", tmp_path / "fits"
    rgb_dir.mkdir()
    names = ["0", "1", "2"]
    for b, name in enumerate(names):
        iio.imwrite(rgb_dir / f"{name}.png", (scene["rgb"][b].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    _write_fits(scene, fits, names)
    out = tmp_path / "out"
    assert main(["texture", str(rgb_dir), "--fits", str(fits), "--out", str(out), "--size", "256"]) == 0
    text = capsys.readouterr().out
    assert "3 frames added" in text and "hand.glb" in text
    tex = iio.imread(out / "texture.png").astype(np.float32) / 255
    assert tex.shape == (256, 256, 3)
    assert main(["texture", str(rgb_dir), "--fits", str(fits), "--out", str(out), "--size", "256"]) == 0
    assert "0 frames added, 3 already done" in capsys.readouterr().out
    # bad input: one line on stderr, status 2
    iio.imwrite(rgb_dir / "3.png", np.zeros((40, 50, 3), np.uint8))
    cases = [
        ([str(rgb_dir), "--fits", str(fits)], "no fit for frame 3"),
        ([str(rgb_dir / "3.png"), "--fits", str(fits / "0")], "RGB image is 50x40 but its camera"),
        ([str(rgb_dir / "0.png"), "--fits", str(tmp_path / "nope")], "not a folder of fits"),
        ([str(rgb_dir / "0.png"), "--fits", str(fits / "0"), "--smoothing", "0"], "smoothing must be in (0, 1]"),
    ]
    for argv, expected in cases:
        assert main(["texture", *argv, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err


# -- the texture energy in the Fitter -----------------------------------------------------------
FIT_RES = 160    # frame side, px (a 220 mm box at 450 mm is ~108 px)
FIT_CROP = 64    # working size


@pytest.fixture(scope="module")
def textured_frame(hand_model):
    """A synthetic depth frame and its RGB (the uv_pattern through TexturesUV) of one random hand
    at the same pose and camera, a start 6-10 mm / 0.08 rad / 0.15 rad per joint away from it,
    and the true texture as the reference."""
    from fitting import FitConfig
    from fitting.config import DEFAULT_STAGES
    from fitting.observation import Observation
    from fitting.preprocess import prepare
    from fitting.synthetic import random_hand_parameters, render_depth_frame
    from fitting.texture import TextureReference
    from renderers import HybridRenderer

    atlas = uv_atlas(hand_model)
    g = torch.Generator().manual_seed(3)
    truth = random_hand_parameters(hand_model, g)
    truth["transl"] = torch.tensor([[0.0, 0.0, 450.0]])
    camera = Camera(220.0, 220.0, (FIT_RES - 1) / 2, (FIT_RES - 1) / 2, FIT_RES, FIT_RES)
    depth, _ = render_depth_frame(hand_model, HybridRenderer(), truth, camera, g)
    with torch.no_grad():
        out = hand_model(**truth)
    texture = uv_pattern(SIZE)
    rgb = render_textured(out.vertices, atlas.faces, atlas.uv, atlas.face_uvs, texture, camera,
                          background=(0.3, 0.3, 0.3))[0]
    obs = Observation(depth=depth, camera=camera, rgb=rgb, name="textured")
    config = FitConfig(working_size=FIT_CROP, stages=tuple(
        dataclasses.replace(s, iterations=max(3, s.iterations // 4)) for s in DEFAULT_STAGES))
    init = {k: v.clone() for k, v in truth.items()}
    init["transl"] = truth["transl"] + torch.tensor([[6.0, -5.0, 10.0]])
    init["global_orient"] = truth["global_orient"] + 0.08
    init["theta"] = truth["theta"] + 0.15 * torch.randn(truth["theta"].shape, generator=g)
    init["beta"] = torch.zeros_like(truth["beta"])
    return dict(obs=obs, crop=prepare(obs, config.box_mm, config.working_size), truth=truth, init=init,
                keypoints=out.keypoints[0], config=config, reference=TextureReference(atlas, texture))


def test_fitter_texture_term_is_lowest_at_the_truth_and_its_residual_matches(hand_model, textured_frame):
    from fitting import Fitter
    from fitting.fitter import stack_targets
    from fitting.observation import Observation

    tf = textured_frame
    fitter = Fitter(hand_model, "soft", tf["config"], texture=tf["reference"])
    bare = Observation(depth=tf["obs"].depth, camera=tf["obs"].camera)  # the same frame without RGB
    target = stack_targets([tf["crop"], tf["crop"]], [tf["obs"], bare])
    assert target.rgb.shape == (2, 3, 2 * FIT_CROP, 2 * FIT_CROP) and target.has_rgb.tolist() == [True, False]
    params = {k: torch.cat([tf["truth"][k], tf["init"][k]]) for k in tf["truth"]}
    with torch.no_grad():
        at_truth, _, _ = fitter.energy_terms({k: v[:1] for k, v in params.items()}, target.select(torch.tensor([0])))
        terms, _, _ = fitter.energy_terms(params, target.select(torch.tensor([0, 0])))
        both, _, _ = fitter.energy_terms(params, target)
        residuals, _, _ = fitter.residual_terms(params, target)
    assert float(at_truth["texture"][0]) < 0.5 * float(terms["texture"][1])  # the start costs more
    assert both["texture"][1] == 0  # no RGB: no texture term for that frame
    torch.testing.assert_close((residuals["texture"] ** 2).sum(-1), both["texture"])
    # without a reference (or with weight 0) the energy has no texture term, as before
    assert "texture" not in Fitter(hand_model, "soft", tf["config"]).energy_terms(params, target)[0]


def test_a_fit_with_the_texture_term_ends_closer_to_the_truth(hand_model, textured_frame):
    from fitting import Fitter

    tf = textured_frame
    errors = {}
    for name, reference in (("without", None), ("with", tf["reference"])):
        fitter = Fitter(hand_model, "soft", tf["config"], texture=reference)
        result = fitter.fit_crops([tf["crop"]], init=tf["init"], observations=[tf["obs"]])[0]
        errors[name] = float((result.keypoints - tf["keypoints"]).norm(dim=-1).mean())
        assert ("texture" in result.history[-1]) == (reference is not None)
    print(f"keypoint error without / with the texture term: {errors['without']:.2f} / {errors['with']:.2f} mm")
    assert errors["with"] < errors["without"]


def test_texture_term_follows_float64_and_rejects_lm_and_bad_references(hand_data, textured_frame):
    from fitting import Fitter, FitConfig
    from fitting.fitter import stack_targets
    from fitting.texture import TextureReference
    from hands import HandModel

    tf = textured_frame
    model = HandModel(hand_data)
    fitter = Fitter(model, "soft", tf["config"], dtype=torch.float64, texture=tf["reference"])
    assert fitter.texture.texture.dtype == torch.float64
    target = stack_targets([tf["crop"]], [tf["obs"]], dtype=torch.float64)
    assert target.rgb.dtype == torch.float64 and target.rgb_camera.dtype == torch.float64
    params = {k: v.to(torch.float64) for k, v in tf["init"].items()}
    params["transl"].requires_grad_(True)
    terms, _, _ = fitter.energy_terms(params, target)
    assert terms["texture"].dtype == torch.float64
    terms["texture"].sum().backward()
    assert params["transl"].grad.dtype == torch.float64 and bool(params["transl"].grad.abs().sum() > 0)
    with pytest.raises(ValueError, match="forward-mode"):
        Fitter(model, "soft", FitConfig(optimizer="lm"), texture=tf["reference"])
    with pytest.raises(InputError, match="TextureReference"):
        Fitter(model, "soft", texture=tf["reference"].texture)
    with pytest.raises(InputError, match="patch_size"):
        TextureReference(tf["reference"].atlas, torch.rand(3, 100, 100))


def test_cli_fit_with_a_reference_texture_and_its_bad_input(textured_frame, tmp_path, capsys):
    import imageio.v3 as iio
    from fitting.cli import main
    from fitting.synthetic import write_depth_png

    tf = textured_frame
    obs = tf["obs"]
    write_depth_png(tmp_path / "frame.png", obs.depth)
    to8 = lambda t: (t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)  # noqa: E731
    iio.imwrite(tmp_path / "rgb.png", to8(obs.rgb))
    iio.imwrite(tmp_path / "texture.png", to8(tf["reference"].texture))
    iio.imwrite(tmp_path / "odd.png", np.zeros((100, 100, 3), np.uint8))
    c = (FIT_RES - 1) / 2
    base = ["fit", str(tmp_path / "frame.png"), "--fx", "220", "--fy", "220", "--cx", str(c), "--cy", str(c),
            "--depth-scale", "0.125", "--renderer", "soft", "--fast", "--device", "cpu"]
    out = tmp_path / "out"
    assert main([*base, "--rgb", str(tmp_path / "rgb.png"), "--texture", str(tmp_path / "texture.png"),
                 "--out", str(out)]) == 0
    assert "texture" in (out / "energy.csv").read_text().splitlines()[0]
    cases = [
        (["--texture", str(tmp_path / "texture.png")], "needs the frame's colour image"),
        (["--rgb", str(tmp_path / "rgb.png"), "--texture", str(tmp_path / "odd.png")], "patch_size"),
        (["--rgb", str(tmp_path / "rgb.png"), "--texture", str(tmp_path / "texture.png"), "--optimizer", "lm"],
         "forward-mode"),
        (["--rgb", str(tmp_path / "rgb.png"), "--texture", str(tmp_path / "texture.png"), "--texture-weight", "-1"],
         "weights"),
    ]
    for extra, expected in cases:
        assert main([*base, *extra, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
