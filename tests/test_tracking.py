"""The fast tracking mode: warm-started Levenberg-Marquardt with a fixed budget per frame."""

import time

import pytest
import torch

from fitting import Fitter, FitConfig, Observation
from fitting.tracking import Tracker, TrackOptions, keypoint_jitter
from fitting.synthetic import synthetic_sequence
from renderers import Camera, HybridRenderer

#: A half-resolution SR305-like camera: renders and segmentation stay cheap.
CAMERA = dict(fx=238.0, fy=238.0, cx=159.5, cy=119.5, width=320, height=240)


def jump_sequence(model, n_frames, jump_at, seed=0):
    """A smooth noisy motion (:func:`fitting.synthetic.synthetic_sequence`) that jumps at ``jump_at``."""
    depths, path, truth = synthetic_sequence(model, HybridRenderer(), Camera(**CAMERA), n_frames,
                                             torch.Generator().manual_seed(seed), jump_at=jump_at)
    frames = [Observation(depth=d, camera=Camera(**CAMERA), name=f"frame{i}") for i, d in enumerate(depths)]
    return frames, path, truth


def track(model, frames, path, **options):
    fitter = Fitter(model, "soft", FitConfig(optimizer="lm", search_optimizer="adam", working_size=64, angles_deg=(0.0,)))
    shape = {k: path[0][k] for k in ("alpha", "beta", "offsets")}
    tracker = Tracker(fitter, TrackOptions(**options), shape=shape)
    with torch.no_grad():
        tracker.resume(path[0], model(**path[0]).keypoints[0])  # the first frame's pose is given
    t0 = time.perf_counter()
    results = [tracker.step(o) for o in frames[1:]]
    return results, (len(frames) - 1) / (time.perf_counter() - t0)


@pytest.mark.slow
@pytest.mark.parametrize("energy", ["render", "icp"])
def test_lm_tracking_follows_a_sequence_with_a_small_budget_and_recovers_from_a_jump(hand_model, energy):
    n, jump = 30, 16
    frames, path, truth = jump_sequence(hand_model, n, jump)
    results, fps = track(hand_model, frames, path, frame_iterations=8, recover_iou=0.8,
                          recover_from_last_pose=True, energy=energy)
    errors = torch.stack([(r.keypoints - truth[i + 1]).norm(dim=-1).mean() for i, r in enumerate(results)])
    recovered = [r.metrics["recovered"] for r in results]
    print(f"keypoint error per frame {[round(float(e), 1) for e in errors]}, recovered {recovered}, "
          f"{fps:.1f} frames/s, jitter {keypoint_jitter(torch.stack([r.keypoints for r in results[:jump - 1]])):.2f}")
    before = list(range(jump - 1))  # results[i] is frame i + 1
    assert float(errors[before].mean()) < 5.0, errors
    for i in before:
        assert results[i].metrics["iterations"] <= 8 and recovered[i] == 0, (i, results[i].metrics)
    # the jump: the warm fit is lost (IoU below the threshold), the search finds the hand again
    assert recovered[jump - 1] == 1, recovered
    after = errors[jump - 1:]
    assert float(errors[jump - 1]) < 10.0 and float(after.mean()) < 8.0, errors


def test_frame_iterations_is_checked_and_caps_the_warm_stages(hand_model):
    with pytest.raises(ValueError, match="frame_iterations"):
        TrackOptions(frame_iterations=0)
    tracker = Tracker(Fitter(hand_model, "soft"), TrackOptions(frame_iterations=6))
    assert tracker.warm_stages and all(s.iterations == 6 for s in tracker.warm_stages)


def test_cli_track_rejects_a_bad_frame_budget_in_one_line(tmp_path, capsys):
    from fitting.cli import build_parser, main

    args = ["fit-sequence", str(tmp_path), "--out", str(tmp_path / "out"), "--fx", "238", "--fy", "238",
            "--cx", "160", "--cy", "120", "--track", "--frame-iterations", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "frame_iterations" in err and len(err.splitlines()) == 1
    parsed = build_parser().parse_args(["fit", "x.png", "--out", "o", "--optimizer", "lm"])
    assert parsed.optimizer == "lm"
    with pytest.raises(SystemExit):  # argparse: a one-line usage error
        build_parser().parse_args(["fit", "x.png", "--out", "o", "--optimizer", "newton"])


@pytest.mark.slow
def test_cli_fit_sequence_track_runs_lm_and_prints_the_frame_rate(hand_model, tmp_path, capsys):
    from fitting.cli import main
    from fitting.synthetic import write_depth_png

    depths, _, _ = synthetic_sequence(hand_model, HybridRenderer(), Camera(**CAMERA), 4, torch.Generator().manual_seed(1))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, d in enumerate(depths):
        write_depth_png(folder / f"{i}.png", d)
    c = CAMERA
    status = main(["fit-sequence", str(folder), "--out", str(tmp_path / "out"), "--fx", str(c["fx"]), "--fy", str(c["fy"]),
                   "--cx", str(c["cx"]), "--cy", str(c["cy"]), "--depth-scale", "0.125", "--fast", "--track",
                   "--frame-iterations", "3", "--shape-frames", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "frames/s" in out and "optimizer lm" in out and "energy icp" in out, out
    assert "4 frames fitted" in out, out


def test_track_crop_finds_the_hand_near_the_prediction_without_segmenting_the_frame(hand_model):
    from fitting.errors import NoHandFoundError
    from fitting.preprocess import segment_large_frame, track_crop, track_mask

    frames, path, _ = jump_sequence(hand_model, 2, None)
    obs = frames[1]
    with torch.no_grad():
        predicted = hand_model(**path[0]).vertices[0]  # the previous frame's hand
    tracked, full = track_mask(obs.depth, obs.camera, predicted), segment_large_frame(obs.depth, obs.camera)
    iou = float((tracked & full).sum()) / float((tracked | full).sum())
    assert iou > 0.95 and int(full.sum()) < 0.2 * full.numel(), iou  # (the segmentation also fills holes)
    crop = track_crop(obs, predicted, 220.0, 64)
    assert crop.mask.shape == (64, 64) and crop.wrist_mm is None and float(crop.mask.sum()) > 100
    with pytest.raises(NoHandFoundError, match="predicted hand"):
        track_crop(obs, predicted + torch.tensor([300.0, 0.0, 0.0]), 220.0, 64)
    with pytest.raises(ValueError, match="margin_mm"):
        track_crop(obs, predicted, 220.0, 64, margin_mm=0.0)
