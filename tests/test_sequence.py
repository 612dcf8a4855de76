"""Fitting sequences: natural order, warm start, temporal term, resumable runs, bad frames."""

import json
import shutil

import numpy as np
import pytest
import torch

from fitting.cli import main
from fitting.errors import InputError
from fitting import SHARP_SILHOUETTE as SHARP, TEMPORAL_WEIGHT, Fitter, FitConfig, Stage
from fitting.sequence import SequenceOptions, fit_sequence, list_frames, natural_key
from fitting.tracking import keypoint_jitter, predict_parameters
from fitting.synthetic import random_hand_parameters, render_depth_frame, smooth_trajectory, write_depth_png
from renderers import Camera, HybridRenderer

#: A half-resolution SR305-like camera: renders and segmentation stay cheap.
CAMERA = dict(fx=238.0, fy=238.0, cx=159.5, cy=119.5, width=320, height=240)
#: Short stages at a 48 px working size keep a frame to about a second.
STAGES = (
    Stage("global", ("global_orient", "transl"), 8, SHARP),
    Stage("articulation", ("global_orient", "transl", "theta"), 15, SHARP),
    Stage("shape", ("global_orient", "transl", "theta", "alpha", "beta", "offsets"), 5, SHARP,
          learning_rates={"global_orient": 0.005, "transl": 0.5, "theta": 0.01}),
)
N_FRAMES = 5


def options(**kw):
    base = dict(shape_frames=1, depth_scale=0.125, progress=False)
    base.update(kw)
    return SequenceOptions(**base)


def fitter(model, stages=STAGES, temporal=TEMPORAL_WEIGHT):
    """A fast fitter: 48 px crops, no in-plane search."""
    config = FitConfig(stages=stages, working_size=48, angles_deg=(0.0,), weights={"temporal": temporal})
    return Fitter(model, HybridRenderer(), config)


# -- fast units ------------------------------------------------------------------------------
def test_frames_are_sorted_naturally_and_an_empty_folder_is_an_input_error(tmp_path):
    for name in ("10.png", "2.png", "1.png", "notes.txt", "frame_3.PNG"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_frames(tmp_path)] == ["1.png", "2.png", "10.png", "frame_3.PNG"]
    assert natural_key("f2") < natural_key("f10")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no frames"):
        list_frames(empty)
    with pytest.raises(InputError, match="does not exist"):
        list_frames(tmp_path / "missing")


def test_cli_fit_sequence_on_an_empty_folder_is_a_one_line_error(tmp_path, capsys):
    status = main(["fit-sequence", str(tmp_path), "--out", str(tmp_path / "out"), "--fx", "238", "--fy", "238",
                   "--cx", "160", "--cy", "120"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("handfit: error:") and "no frames" in err and len(err.splitlines()) == 1


def test_keypoint_jitter_is_the_mean_acceleration():
    t = torch.arange(6, dtype=torch.float64)[:, None, None]
    linear = torch.cat([t * 2.0, t * 0, t * 0], -1).expand(6, 21, 3)
    assert keypoint_jitter(linear) == pytest.approx(0.0)
    shaken = linear.clone()
    shaken[3, :, 0] += 1.0  # one frame 1 mm off: accelerations 0, 1, 2, 1 mm at t = 2..5
    assert keypoint_jitter(shaken) == pytest.approx((1 + 2 + 1) / 4)
    assert np.isnan(keypoint_jitter(linear[:2]))


def test_constant_velocity_prediction_extrapolates_rotation_translation_and_angles():
    from pytorch3d.transforms import axis_angle_to_matrix

    a = {"global_orient": torch.tensor([[0.0, 0.0, 0.1]]), "transl": torch.tensor([[0.0, 0.0, 400.0]]),
         "theta": torch.zeros(1, 20), "beta": torch.ones(1, 7)}
    b = {"global_orient": torch.tensor([[0.0, 0.0, 0.3]]), "transl": torch.tensor([[5.0, 0.0, 410.0]]),
         "theta": torch.full((1, 20), 0.2), "beta": torch.ones(1, 7)}
    p = predict_parameters([a, b])
    torch.testing.assert_close(p["transl"], torch.tensor([[10.0, 0.0, 420.0]]))
    torch.testing.assert_close(p["theta"], torch.full((1, 20), 0.4))
    torch.testing.assert_close(axis_angle_to_matrix(p["global_orient"]),
                               axis_angle_to_matrix(torch.tensor([[0.0, 0.0, 0.5]])), atol=1e-6, rtol=0)
    torch.testing.assert_close(predict_parameters([b])["transl"], b["transl"])


# -- fits on a synthetic sequence (slow) ------------------------------------------------------
@pytest.fixture(scope="module")
def sequence_dir(hand_model, tmp_path_factory):
    """Five noisy depth frames of a smooth synthetic motion, and the true keypoints."""
    renderer = HybridRenderer()
    g = torch.Generator().manual_seed(0)
    start = random_hand_parameters(hand_model, g)
    end = {k: v.clone() for k, v in start.items()}
    end["transl"] = end["transl"] + torch.tensor([[25.0, -15.0, 20.0]])
    end["global_orient"] = end["global_orient"] + 0.15
    end["theta"] = end["theta"] + 0.25
    folder = tmp_path_factory.mktemp("sequence")
    truth = []
    for i, params in enumerate(smooth_trajectory(start, end, N_FRAMES)):
        depth, _ = render_depth_frame(hand_model, renderer, params, Camera(**CAMERA), g)
        write_depth_png(folder / f"frame{i}.png", depth)
        truth.append(hand_model(**params).keypoints[0].detach())
    return folder, torch.stack(truth)


@pytest.fixture(scope="module")
def reference_run(hand_model, sequence_dir, tmp_path_factory):
    """One uninterrupted warm-started run with the temporal term."""
    out = tmp_path_factory.mktemp("reference")
    report = fit_sequence(sequence_dir[0], out, fitter(hand_model), Camera(**CAMERA), options())
    return out, report


def seeded_out(reference, tmp_path, name):
    """An output folder that starts with the reference's shape (to skip the shape estimate)."""
    out = tmp_path / name
    out.mkdir()
    shutil.copy(reference / "shape.npz", out / "shape.npz")
    return out


def result_arrays(out, frame):
    with np.load(out / frame / "result.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_sequence_outputs_every_frame_and_tracks_the_motion(reference_run, sequence_dir):
    out, report = reference_run
    truth = sequence_dir[1]
    names = [f"frame{i}" for i in range(N_FRAMES)]
    assert report.frames == names and report.complete and not report.failures
    assert sorted(report.fitted) == sorted(names)
    summary = json.loads((out / "sequence.json").read_text())
    assert summary["complete"] and set(summary["metrics"]) == set(names)
    errors = [float(np.linalg.norm(result_arrays(out, n)["keypoints"] - truth[i].numpy(), axis=-1).mean())
              for i, n in enumerate(names)]
    assert max(errors) < 15.0, errors
    for n in names:
        m = report.metrics[n]
        assert m["iou"] > 0.7, (n, m)  # 48 px crops, 15 articulation steps
        assert "penetration_max_mm" in m and "penetration_pairs" in m
        # one frozen shape for the whole sequence
        np.testing.assert_array_equal(result_arrays(out, n)["beta"], result_arrays(out, names[0])["beta"])
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_warm_start_needs_fewer_iterations_than_cold_start(hand_model, reference_run, sequence_dir, tmp_path):
    reference, report = reference_run
    out = seeded_out(reference, tmp_path, "cold")
    cold = fit_sequence(sequence_dir[0], out, fitter(hand_model), Camera(**CAMERA),
                        options(warm_start=False, max_frames=3))
    total = lambda m: m["iterations"] + m["search_iterations"]  # noqa: E731
    for name in ("frame1", "frame2"):
        assert total(report.metrics[name]) < total(cold.metrics[name]), (report.metrics[name], cold.metrics[name])


@pytest.mark.slow
def test_temporal_term_lowers_the_jitter(hand_model, reference_run, sequence_dir, tmp_path):
    reference, report = reference_run
    out = seeded_out(reference, tmp_path, "no_temporal")
    plain = fit_sequence(sequence_dir[0], out, fitter(hand_model, temporal=0.0), Camera(**CAMERA), options())
    assert TEMPORAL_WEIGHT > 0
    assert report.jitter_mm < plain.jitter_mm, (report.jitter_mm, plain.jitter_mm)


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_outputs(hand_model, reference_run, sequence_dir, tmp_path):
    reference, _ = reference_run
    out = seeded_out(reference, tmp_path, "resumed")
    run = lambda **kw: fit_sequence(sequence_dir[0], out, fitter(hand_model),  # noqa: E731
                                    Camera(**CAMERA), options(**kw))
    first = run(max_frames=2)
    assert first.fitted == ["frame0", "frame1"] and not first.complete
    # a frame killed while being written leaves only a temporary folder, which is redone
    (out / ".frame2.tmp").mkdir()
    (out / ".frame2.tmp" / "params.json").write_text("{")
    second = run()
    assert second.skipped == ["frame0", "frame1"] and second.fitted == ["frame2", "frame3", "frame4"]
    assert second.complete and not (out / ".frame2.tmp").exists()
    for i in range(N_FRAMES):
        a, b = result_arrays(reference, f"frame{i}"), result_arrays(out, f"frame{i}")
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"frame{i} {k}")
    assert second.jitter_mm == pytest.approx(reference_run[1].jitter_mm)


@pytest.mark.slow
def test_corrupt_and_wrong_size_frames_are_reported_and_skipped(hand_model, sequence_dir, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(sequence_dir[0] / "frame0.png", folder / "0.png")
    (folder / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    import imageio.v3 as iio

    iio.imwrite(folder / "2.png", np.full((120, 160), 3600, np.uint16))  # another size
    shutil.copy(sequence_dir[0] / "frame1.png", folder / "3.png")
    stages = tuple(Stage(s.name, s.free, 3, s.render_settings, s.learning_rates) for s in STAGES)
    out = tmp_path / "out"
    report = fit_sequence(folder, out, fitter(hand_model, stages, temporal=0.0), Camera(**CAMERA), options())
    assert set(report.metrics) == {"0", "3"}
    assert set(report.failures) == {"1", "2"}
    assert "320x240" in report.failures["2"] and "160x120" in report.failures["2"]
    assert (out / "1.error.txt").exists() and (out / "2.error.txt").exists()
    assert (out / "3" / "params.json").exists() and report.complete
    with pytest.raises(InputError):
        fit_sequence(tmp_path / "nothing", out, fitter(hand_model), Camera(**CAMERA))


def test_cli_fit_sequence_rejects_a_bad_limits_table(tmp_path, capsys):
    import imageio.v3 as iio

    frames = tmp_path / "frames"
    frames.mkdir()
    iio.imwrite(frames / "0.png", np.full((240, 320), 3600, np.uint16))
    limits = tmp_path / "limits.json"
    limits.write_text('{"index_pip_flx": [0, 1]}')
    args = ["fit-sequence", str(frames), "--out", str(tmp_path / "out"), "--fx", "238", "--fy", "238", "--cx", "160",
            "--cy", "120", "--limits", str(limits)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "index_pip_flx" in err and len(err.splitlines()) == 1
    limits.write_text("not json")
    assert main(args) == 2
    assert "joint-limit table" in capsys.readouterr().err
