"""The library's front door: load_hand, Fitter.fit / track, FitResult.save, keypoints, devices, dtypes."""

import dataclasses
import re
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import fitting
from fitting import SHARP_SILHOUETTE, Fitter, FitConfig, FitResult, InputError, Observation, Stage
from fitting.preprocess import prepare
from fitting.synthetic import random_hand_parameters, render_depth_frame
from hands import HandModel, load_hand
from renderers import Camera, make_renderer

ROOT = Path(__file__).resolve().parents[1]
#: A half-resolution SR305-like camera keeps segmentation cheap.
CAMERA = dict(fx=238.0, fy=238.0, cx=159.5, cy=119.5, width=320, height=240)
#: Short stages at a 48 px crop: a frame fits in about a second.
FAST_STAGES = (
    Stage("global", ("global_orient", "transl"), 6, SHARP_SILHOUETTE),
    Stage("articulation", ("global_orient", "transl", "theta"), 8, SHARP_SILHOUETTE),
    Stage("shape", ("global_orient", "transl", "theta", "alpha", "beta", "offsets"), 4, SHARP_SILHOUETTE,
          learning_rates={"global_orient": 0.005, "transl": 0.5, "theta": 0.01}),
)


def fast_config(**kw):
    base = dict(stages=FAST_STAGES, working_size=48, angles_deg=(0.0, 15.0), candidate_iterations=4,
                hypothesis_iterations=4)
    base.update(kw)
    return FitConfig(**base)


@pytest.fixture(scope="module")
def frames(hand_model):
    """Three synthetic depth frames (320x240, mm) with their true keypoints (21, 3) mm."""
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(3):
        truth = random_hand_parameters(hand_model, g)
        depth, _ = render_depth_frame(hand_model, make_renderer("soft"), truth, Camera(**CAMERA), g)
        with torch.no_grad():
            out.append((depth, hand_model(**truth).keypoints[0]))
    return out


def observation(frame, name="f", **kw):
    return Observation(depth=frame[0], camera=Camera(**CAMERA), name=name, **kw)


# -- load_hand -------------------------------------------------------------------------------
def test_load_hand_kinds_and_errors(shared_dir):
    model = load_hand("default", dtype=torch.float64)
    assert isinstance(model, HandModel) and model.v_template.dtype == torch.float64
    gltf = load_hand("gltf", shared_dir / "models" / "godot_xr_hand" / "hand_r.gltf")
    assert gltf.data.side == "right"
    for args, message in ((("nurbs",), "kind must be one of"), (("mano",), "needs the path"),
                          (("default", "x.pkl"), "takes no path"),
                          (("mano", "/nonexistent/MANO_RIGHT.pkl"), "no such file")):
        with pytest.raises(ValueError, match=message) as err:
            load_hand(*args)
        assert "\n" not in str(err.value)


# -- Fitter.fit ------------------------------------------------------------------------------
def test_fit_one_observation_and_a_batch_with_keypoints(hand_model, frames, tmp_path):
    fitter = Fitter(hand_model, "soft", fast_config())
    single = fitter.fit(observation(frames[0]))
    assert isinstance(single, FitResult)
    assert single.keypoints.shape == (21, 3) and single.vertices.shape == (hand_model.num_vertices, 3)
    assert 0.0 <= single.metrics["iou"] <= 1.0 and "mpjpe_mm" not in single.metrics
    # the second frame carries 3D keypoints (its truth, 2 of them missing), the third 2D ones
    kp3d = frames[1][1].clone()
    kp3d[[4, 8]] = float("nan")
    uv = Camera(**CAMERA).project(frames[2][1][None])[0]
    batch = fitter.fit([observation(frames[0], "a"), observation(frames[1], "b", keypoints_3d=kp3d),
                        observation(frames[2], "c", keypoints_2d=uv)])
    assert [r.name for r in batch] == ["a", "b", "c"]
    assert "mpjpe_mm" in batch[1].metrics and "keypoints_2d_error_px" in batch[2].metrics
    # the keypoint energies act on the frames that have keypoints only
    assert "keypoints_3d" in batch[1].history[-1] and batch[0].history[-1].get("keypoints_3d", 0.0) == 0.0
    expected = (batch[1].keypoints - frames[1][1]).norm(dim=-1)
    keep = torch.ones(21, dtype=torch.bool)
    keep[[4, 8]] = False
    assert batch[1].metrics["mpjpe_mm"] == pytest.approx(float(expected[keep].mean()), rel=1e-5)
    paths = single.save(tmp_path / "frame")
    assert sorted(p.name for p in paths.values()) == ["energy.csv", "mesh.obj", "overlay.png", "params.json",
                                                       "result.npz"]
    assert all(p.stat().st_size > 0 for p in paths.values())


def test_keypoints_pull_the_fit_towards_them(hand_model, frames):
    """With its true 3D keypoints a frame ends nearer to its truth than without them."""
    config = fast_config()
    obs = observation(frames[0], keypoints_3d=frames[0][1])
    crop = prepare(obs, config.box_mm, config.working_size)
    fitter = Fitter(hand_model, "soft", config)
    error = lambda r: float((r.keypoints - frames[0][1]).norm(dim=-1).mean())  # noqa: E731
    free = fitter.fit_crops([crop], observations=[dataclasses.replace(obs, keypoints_3d=None)])[0]
    pulled = fitter.fit_crops([crop], observations=[obs])[0]
    assert error(pulled) < error(free), (error(pulled), error(free))


def test_fit_rejects_bad_batches(hand_model):
    fitter = Fitter(hand_model, "soft", fast_config())
    with pytest.raises(InputError, match="no observation given"):
        fitter.fit([])
    with pytest.raises(InputError, match=r"observations\[0\] must be a fitting.Observation"):
        fitter.fit([torch.zeros(240, 320)])


def test_mixed_frame_sizes_fit_together(hand_model, frames):
    """Every frame is cropped to the working size first, so sizes and cameras may differ."""
    small = torch.nn.functional.interpolate(frames[1][0][None, None], scale_factor=0.5, mode="nearest")[0, 0]
    cam = Camera(fx=119.0, fy=119.0, cx=79.75, cy=59.75, width=160, height=120)
    results = Fitter(hand_model, "soft", fast_config()).fit(
        [observation(frames[0]), Observation(depth=small, camera=cam, name="small")])
    assert [r.observation.image_size for r in results] == [(240, 320), (120, 160)]
    assert all(r.metrics["iou"] > 0.3 for r in results), [r.metrics["iou"] for r in results]


def test_device_and_dtype_arguments_are_checked(hand_model):
    with pytest.raises(ValueError, match="dtype must be a floating"):
        Fitter(hand_model, "soft", dtype=torch.int32)
    with pytest.raises(ValueError, match="device must be"):
        Fitter(hand_model, "soft", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            Fitter(hand_model, "soft", device="cuda")
    assert Fitter(hand_model, "soft", device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")


class LowPrecisionWatch(TorchFunctionMode):
    """Records every torch call made by our packages that takes or makes a floating tensor of
    another dtype than float64 (conversions and attribute reads aside; calls inside PyTorch3D
    or torch itself are theirs)."""

    ALLOWED = {"to", "type", "double", "float", "__get__"}
    OURS = tuple(str(ROOT / p) for p in ("hands", "renderers", "losses", "fitting"))

    def __init__(self):
        super().__init__()
        self.calls = []

    def _caller(self) -> str:
        frame = sys._getframe(2)
        while frame is not None and "/torch/" in frame.f_code.co_filename:
            frame = frame.f_back
        return "" if frame is None else frame.f_code.co_filename

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", str(func))
        if name not in self.ALLOWED and self._caller().startswith(self.OURS):
            tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            if any(t.is_floating_point() and t.dtype != torch.float64 for t in tensors):
                self.calls.append(f"{name} ({Path(self._caller()).name})")
        return out


@pytest.mark.parametrize("renderer", ["soft", "splat"])
def test_a_float64_fit_stays_float64_from_search_to_result(frames, renderer):
    model = load_hand("default")
    fitter = Fitter(model, renderer, fast_config(), dtype=torch.float64)
    crops = [prepare(observation(f), 220.0, 48) for f in frames[:2]]
    watch = LowPrecisionWatch()
    with watch:
        results = fitter.fit_crops(crops)
    assert not watch.calls, f"ops on other floating dtypes: {sorted(set(watch.calls))[:20]}"
    for r in results:
        assert r.vertices.dtype == r.keypoints.dtype == torch.float64
        assert all(v.dtype == torch.float64 for v in r.params.values())
        assert r.render.silhouette.dtype == r.render.depth.dtype == torch.float64
        assert r.metrics["iou"] > 0.3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_fit_matches_the_cpu_fit(frames):
    obs = observation(frames[0])
    cpu = Fitter(load_hand("default"), "soft", fast_config(), device="cpu").fit(obs)
    gpu = Fitter(load_hand("default"), "soft", fast_config(), device="cuda").fit(obs)
    assert gpu.vertices.device.type == "cpu"  # results come back to the host
    assert abs(gpu.metrics["iou"] - cpu.metrics["iou"]) < 0.05


# -- Fitter.track ----------------------------------------------------------------------------
def test_track_yields_one_result_per_frame_with_a_frozen_shape(hand_model, frames):
    fitter = Fitter(hand_model, "soft", fast_config())
    blank = Observation(depth=torch.full((240, 320), 3000.0), camera=Camera(**CAMERA), name="wall")
    stream = (observation(f, str(i)) for i, f in enumerate(frames))  # a generator: read lazily
    results = list(fitter.track(stream, shape_frames=2))
    assert [r.name for r in results] == ["0", "1", "2"]
    for r in results[1:]:
        torch.testing.assert_close(r.params["beta"], results[0].params["beta"])
    assert all("recovered" in r.metrics for r in results[1:])
    with pytest.raises(InputError):
        list(fitter.track([observation(frames[0]), blank], shape=_shape(results[0])))
    survivors = list(fitter.track([blank, observation(frames[0], "ok")], shape=_shape(results[0]),
                                  skip_failures=True))
    assert [r.name for r in survivors] == ["ok"]


def _shape(result):
    return {k: result.params[k][None] for k in ("alpha", "beta", "offsets")}


# -- the README's "Use from Python" ----------------------------------------------------------
def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs(shared_dir, tmp_path, monkeypatch):
    code = readme_python_block()
    assert len([line for line in code.splitlines() if line.strip()]) <= 14  # "about ten lines"
    code = code.replace("../shared", str(shared_dir)).replace('"out/', f'"{tmp_path}/')

    class FastFitter(Fitter):  # the same API, a short schedule
        def __init__(self, model, renderer=None, config=None, **kw):
            super().__init__(model, renderer, config or fast_config(), **kw)

    monkeypatch.setattr(fitting, "Fitter", FastFitter)
    printed = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: printed.append(a))
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "frame" / "params.json").exists()
    assert printed and len(printed) >= 2
