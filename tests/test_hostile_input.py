"""Untrusted input and destinations: outputs checked before the work, written whole, never mixed.

(The model loaders' hostile files are in ``tests/test_hostile_models.py``.)
"""

import os

import numpy as np
import pytest
import torch

from fitting import InputError
from fitting.cli import main
from fitting.sequence import list_frames
from fitting.writers import RESULT_FILES, check_output_dir, write_result

INTRINSICS = ["--fx", "476.007", "--fy", "476.007", "--cx", "313.683", "--cy", "242.755"]


def run(argv, capsys):
    status = main(argv)
    err = capsys.readouterr().err.strip()
    return status, err


@pytest.fixture
def frame(tmp_path):
    import imageio.v3 as iio

    v, u = np.mgrid[:480, :640]
    depth = np.full((480, 640), 1000.0)
    depth[(u - 300) ** 2 + (v - 250) ** 2 < 45 ** 2] = 450.0
    path = tmp_path / "frame.png"
    iio.imwrite(path, (depth * 8).astype(np.uint16))
    return path


# -- destinations are checked before any work ------------------------------------------------
def test_out_naming_a_file_fails_before_the_fit(frame, tmp_path, capsys, monkeypatch):
    import fitting.fitter

    def no_fit(*args, **kwargs):
        raise AssertionError("the fit ran although --out was unusable")

    monkeypatch.setattr(fitting.fitter.Fitter, "fit", no_fit)
    (tmp_path / "taken").write_text("x")
    status, err = run(["fit", str(frame), *INTRINSICS, "--depth-scale", "0.125", "--out", str(tmp_path / "taken")],
                      capsys)
    assert status == 2 and "exists and is not a folder" in err and len(err.splitlines()) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    status, err = run(["fit", str(frame), *INTRINSICS, "--depth-scale", "0.125", "--out", str(tmp_path / "mine")],
                      capsys)
    assert status == 2 and "not a handfit result" in err and "thesis.tex" in err
    status, err = run(["demo", "--out", str(tmp_path / "taken" / "sub")], capsys)
    assert status == 2 and "cannot be written" in err


def test_an_unwritable_folder_is_refused(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="cannot be written"):
        check_output_dir(tmp_path / "file.txt" / "out")  # a folder inside a file
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes whatever the mode says
            with pytest.raises(InputError, match="cannot be written"):
                check_output_dir(locked / "out")
    finally:
        locked.chmod(0o700)


def test_sequence_and_eval_options_are_one_line_errors(tmp_path, capsys):
    import imageio.v3 as iio

    frames = tmp_path / "frames"
    frames.mkdir()
    iio.imwrite(frames / "0.png", np.full((240, 320), 3600, np.uint16))
    base = ["fit-sequence", str(frames), "--out", str(tmp_path / "out"), "--fx", "238", "--fy", "238",
            "--cx", "160", "--cy", "120"]
    for flags, message in ((["--shape-frames", "0"], "shape_frames"), (["--max-frames", "-1"], "max_frames"),
                           (["--temporal-weight", "-1"], "weights must be finite numbers >= 0")):
        status, err = run(base + flags, capsys)
        assert status == 2 and message in err and len(err.splitlines()) == 1, (flags, err)
    status, err = run(["eval", str(frames), str(frames), "--csv", str(tmp_path)], capsys)
    assert status == 2 and "is a folder" in err


def test_frames_whose_outputs_would_collide_are_refused_up_front(tmp_path):
    for name in ("30.png", "30.tif", "31.png"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(InputError, match="30.png and 30.tif .* same output folder 30/"):
        list_frames(tmp_path)


# -- a result folder is written whole --------------------------------------------------------
class _Result:
    """The least a result needs for the writer (what a FitResult holds)."""

    def __init__(self, name, z):
        from renderers import Camera

        from fitting import Observation

        cam = Camera(60.0, 60.0, 15.5, 11.5, 32, 24)
        self.name, self.metrics, self.history = name, {"iou": 1.0}, []
        self.params = {"transl": torch.tensor([0.0, 0.0, z])}
        self.vertices = torch.tensor([[0.0, 0.0, z], [10.0, 0.0, z], [0.0, 10.0, z]])
        self.faces = torch.tensor([[0, 1, 2]])
        self.keypoints = torch.zeros(21, 3) + torch.tensor([0.0, 0.0, z])
        self.observation = Observation(depth=torch.full((24, 32), z), camera=cam, name=name)


def test_a_rewrite_killed_midway_leaves_the_earlier_result_whole(tmp_path, monkeypatch):
    out = tmp_path / "frame"
    write_result(_Result("first", 400.0), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    import fitting.writers

    real = fitting.writers.trimesh.Trimesh

    def killed(*args, **kwargs):  # the process dies while writing mesh.obj of the second fit
        raise KeyboardInterrupt

    monkeypatch.setattr(fitting.writers.trimesh, "Trimesh", killed)
    with pytest.raises(KeyboardInterrupt):
        write_result(_Result("second", 500.0), out)
    monkeypatch.setattr(fitting.writers.trimesh, "Trimesh", real)
    import json

    assert json.loads((out / "params.json").read_text())["name"] == "first"
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    write_result(_Result("second", 500.0), out)  # the next write cleans up and replaces it whole
    assert json.loads((out / "params.json").read_text())["name"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame"]


# -- large frames ----------------------------------------------------------------------------
def test_a_large_frame_is_segmented_on_a_decimated_copy_and_finds_the_same_hand(hand_model):
    """A 6x enlarged frame (the same scene, twice MAX_SEGMENT_PIXELS) crops like the original."""
    from fitting import Observation
    from fitting.preprocess import MAX_SEGMENT_PIXELS, prepare
    from fitting.synthetic import random_hand_parameters, render_depth_frame
    from renderers import Camera, make_renderer

    cam = Camera(238.0, 238.0, 159.5, 119.5, 320, 240)
    g = torch.Generator().manual_seed(2)
    depth, _ = render_depth_frame(hand_model, make_renderer("soft"), random_hand_parameters(hand_model, g), cam, g)
    k = 6
    big = depth.repeat_interleave(k, 0).repeat_interleave(k, 1)
    big_cam = Camera(238.0 * k, 238.0 * k, 159.5 * k + (k - 1) / 2, 119.5 * k + (k - 1) / 2, 320 * k, 240 * k)
    assert big.numel() > 2 * MAX_SEGMENT_PIXELS  # segmented at a stride of 2
    small_crop = prepare(Observation(depth=depth, camera=cam))
    big_crop = prepare(Observation(depth=big, camera=big_cam))
    a, b = small_crop.mask > 0.5, big_crop.mask > 0.5
    assert float((a & b).sum() / (a | b).sum()) > 0.95
    torch.testing.assert_close(big_crop.centre_mm, small_crop.centre_mm, atol=2.0, rtol=0)
