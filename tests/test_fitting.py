"""The fitter on synthetic truth, its per-frame guards, and a real SR305 frame."""

import math

import pytest
import torch

from fitting import Fitter, FitConfig, FitTarget, Stage
from fitting.optimizers import BatchedAdam
from fitting.io import read_depth
from fitting.observation import Observation
from fitting.synthetic import SR305_CAMERA, random_hand_parameters, render_fit_target
from renderers import RENDERERS, Camera, HybridRenderer, make_renderer

SIZE = 96


def crop_camera(batch):
    f = SIZE * 450.0 / 220.0  # a 220 mm box at 450 mm fills the crop
    return Camera(fx=f, fy=f, cx=SIZE / 2 - 0.5, cy=SIZE / 2 - 0.5, width=SIZE, height=SIZE).expand(batch)


def synthetic_target(model, renderer, truth, camera, seed=0):
    return render_fit_target(model, renderer, truth, camera, torch.Generator().manual_seed(seed))


def perturbed_start(hand_model):
    """A random hand's exact crop (truth, target, render) and a start 6-10 mm, 0.08 rad and
    0.15 rad per joint away from it, with the template shape."""
    g = torch.Generator().manual_seed(3)
    truth = random_hand_parameters(hand_model, g)
    truth["transl"] = torch.tensor([[0.0, 0.0, 450.0]])
    target, render = synthetic_target(hand_model, HybridRenderer(), truth, crop_camera(1))
    init = {k: v.clone() for k, v in truth.items()}
    init["transl"] = truth["transl"] + torch.tensor([[6.0, -5.0, 10.0]])
    init["global_orient"] = truth["global_orient"] + 0.08
    init["theta"] = truth["theta"] + 0.15 * torch.randn(truth["theta"].shape, generator=g)
    init["beta"] = torch.zeros_like(truth["beta"])
    return truth, target, render, init


@pytest.mark.slow
@pytest.mark.parametrize("renderer_name", sorted(set(RENDERERS) - {"pytorch3d"}))  # see the next test
def test_fit_recovers_synthetic_truth_from_a_perturbed_start(hand_model, renderer_name):
    # the target is the exact rasterization; the fit renders with the renderer under test
    renderer = make_renderer(renderer_name)
    truth, target, render, init = perturbed_start(hand_model)
    state = Fitter(hand_model, renderer).run(target, init)
    with torch.no_grad():
        fit = hand_model(**state.params)
        fit_render = HybridRenderer()(fit.vertices, hand_model.faces, target.camera)
    error = (fit.keypoints - hand_model(**truth).keypoints).norm(dim=-1).mean()
    iou = (fit_render.mask & render.mask).sum() / (fit_render.mask | render.mask).sum()
    print(f"{renderer_name}: keypoint error {error:.2f} mm, IoU {iou:.3f}, {state.seconds:.1f} s")
    assert error < 5.0, f"mean keypoint error {error:.1f} mm"
    # the splat silhouette reaches about half a splat radius beyond the outline (its mask is
    # about 6 % larger than the rasterized one, renderers/splat.py), so its fit is that much
    # thinner in the exact rasterization while its keypoints are as accurate
    assert iou > (0.93 if renderer_name == "splat" else 0.95), f"IoU {iou:.3f}"


def test_pytorch3d_pipeline_drives_the_fit(hand_model):
    """PyTorch3D's own renderer (about 1 s per iteration on the CPU) lowers the energy through
    its own backward pass; the full synthetic-truth fit above runs the faster renderers."""
    g = torch.Generator().manual_seed(3)
    truth = random_hand_parameters(hand_model, g)
    truth["transl"] = torch.tensor([[0.0, 0.0, 450.0]])
    f = 48 * 450.0 / 220.0
    camera = Camera(fx=f, fy=f, cx=23.5, cy=23.5, width=48, height=48)
    target, _ = synthetic_target(hand_model, HybridRenderer(), truth, camera)
    init = {k: v.clone() for k, v in truth.items()}
    init["transl"] = truth["transl"] + torch.tensor([[6.0, -5.0, 10.0]])
    stage = Stage("global", ("global_orient", "transl"), 6)
    state = Fitter(hand_model, "pytorch3d").run(target, init, stages=(stage,))
    totals = [float(h["total"][0]) for h in state.history]
    assert min(totals[1:]) < 0.8 * totals[0], totals


class NaNAfter(torch.nn.Module):
    """A renderer that returns NaN depth for frame ``frame`` from call ``after`` on (while the
    batch still holds it: the fitter leaves a stopped frame out, and records its batch sizes)."""

    def __init__(self, inner, frame, after):
        super().__init__()
        self.inner, self.frame, self.after, self.calls = inner, frame, after, 0
        self.batch_sizes = []

    def forward(self, verts, faces, camera, **kw):
        out = self.inner(verts, faces, camera, **kw)
        self.calls += 1
        self.batch_sizes.append(verts.shape[0])
        if self.calls > self.after and verts.shape[0] > self.frame:
            depth = out.depth.clone()
            depth[self.frame] = float("nan")
            out = out._replace(depth=depth, silhouette=out.silhouette + 0 * depth)
        return out


def test_nan_guard_keeps_the_best_state_per_frame(hand_model):
    renderer = HybridRenderer()
    truth = hand_model.neutral_parameters(2)
    truth["transl"][:, 2] = 450.0
    target, _ = synthetic_target(hand_model, renderer, truth, crop_camera(2))
    init = {k: v.clone() for k, v in truth.items()}
    init["transl"] = truth["transl"] + torch.tensor([5.0, 0.0, 0.0])
    config = FitConfig(stages=(Stage("global", ("global_orient", "transl"), 6),))
    nan_renderer = NaNAfter(renderer, frame=1, after=3)
    state = Fitter(hand_model, nan_renderer, config).run(target, init)
    for v in state.params.values():
        assert torch.isfinite(v).all()
    assert state.nan_events.tolist() == [0, 1]
    # once frame 1 has stopped, only frame 0 is rendered (the last render is the final one of both)
    assert nan_renderer.batch_sizes[:4] == [2] * 4 and set(nan_renderer.batch_sizes[4:-1]) == {1}
    assert int(state.iterations[1]) < int(state.iterations[0])
    # frame 0 is untouched by frame 1's trouble: it kept improving
    assert float(state.energy[0]) < float(state.history[0]["total"][0])
    assert math.isfinite(float(state.energy[1]))


def test_fitter_rejects_bad_configuration(hand_model):
    with pytest.raises(ValueError, match="unknown terms"):
        FitConfig(weights={"silhuette": 1.0})
    with pytest.raises(ValueError, match="unknown parameters"):
        FitConfig(stages=(Stage("x", ("thetas",), 1),))
    with pytest.raises(ValueError, match="does not free"):
        FitConfig(stages=(Stage("x", ("theta",), 1, learning_rates={"transl": 1.0}),))
    with pytest.raises(ValueError, match="patience"):
        FitConfig(patience=0)
    target = FitTarget(crop_camera(1), torch.zeros(1, SIZE, SIZE), torch.zeros(1, SIZE, SIZE))
    with pytest.raises(ValueError, match="batch size"):
        Fitter(hand_model, HybridRenderer()).run(target, {"theta": torch.zeros(2, hand_model.num_dofs)})


@pytest.mark.slow
def test_real_sr305_frame_reaches_iou(shared_dir, hand_model):
    path = shared_dir / "data" / "sr305" / "20210326-231615" / "60.png"
    obs = Observation(depth=read_depth(path, depth_scale=0.125), camera=Camera(**SR305_CAMERA), name="60")
    result = Fitter(hand_model, HybridRenderer()).fit(obs)
    assert result.metrics["iou"] > 0.85, result.metrics
    assert result.metrics["depth_median_mm"] < 10.0, result.metrics
    assert torch.isfinite(result.vertices).all()
    # outputs are in the input camera's frame: the keypoints project onto the segmented hand
    uv = obs.camera.project(result.keypoints[None])[0].round().long()
    from fitting.preprocess import segment_hand

    mask = segment_hand(obs.depth, obs.camera)
    inside = mask[uv[:, 1].clamp(0, 479), uv[:, 0].clamp(0, 639)]
    assert inside.float().mean() > 0.8


def test_batched_adam_steps_each_frame_by_its_own_step_size_and_freezes_inactive_frames():
    x = torch.tensor([[1.0, -2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    adam = BatchedAdam({"x": x}, {"x": 0.1})
    (x ** 2).sum().backward()
    adam.step(scale=torch.tensor([1.0, 0.5, 1.0]), active=torch.tensor([True, True, False]))
    # Adam's first step moves every coordinate by its step size against the gradient's sign
    torch.testing.assert_close(x.detach(), torch.tensor([[0.9, -1.9], [2.95, 3.95], [5.0, 6.0]]))
    assert adam.steps.tolist() == [1.0, 1.0, 0.0]
    adam.reset(torch.tensor([True, False, False]))
    assert adam.steps.tolist() == [0.0, 1.0, 0.0]
    assert adam.m["x"][0].abs().sum() == 0 and adam.m["x"][1].abs().sum() > 0


def test_batched_adam_minimises_a_quadratic_per_frame():
    target = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    x = torch.zeros(2, 2, requires_grad=True)
    adam = BatchedAdam({"x": x}, {"x": 0.05})
    for _ in range(400):
        x.grad = None
        ((x - target) ** 2).sum().backward()
        adam.step(torch.ones(2), torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(x.detach(), target, atol=0.05, rtol=0)


def test_rotate_in_plane_turns_the_hand_about_its_palm_normal():
    from pytorch3d.transforms import axis_angle_to_matrix

    from fitting.initialize import rotate_in_plane

    params = {"global_orient": torch.tensor([[0.3, -0.2, 1.0], [0.0, 0.0, 0.0]]),
              "transl": torch.tensor([[1.0, 2.0, 450.0], [0.0, 0.0, 500.0]])}
    out = rotate_in_plane(params, (-30.0, 0.0, 90.0))
    assert out["global_orient"].shape == (6, 3)
    torch.testing.assert_close(out["transl"], params["transl"].repeat_interleave(3, 0))
    R0 = axis_angle_to_matrix(params["global_orient"]).repeat_interleave(3, 0)
    R = axis_angle_to_matrix(out["global_orient"])
    torch.testing.assert_close(R[:, :, 2], R0[:, :, 2], atol=1e-5, rtol=0)  # the palm normal stays
    torch.testing.assert_close(R[1], R0[1], atol=1e-5, rtol=0)  # angle 0 is the input
    cos = (R[:, :, 0] * R0[:, :, 0]).sum(-1)  # the thumb axis turns by the angle
    torch.testing.assert_close(cos, torch.cos(torch.deg2rad(torch.tensor([-30.0, 0.0, 90.0] * 2))),
                               atol=1e-5, rtol=0)
    # the rotation is about +z of the hand: +90 degrees takes its x axis to its y axis
    torch.testing.assert_close(R[2, :, 0], R0[2, :, 1], atol=1e-5, rtol=0)
