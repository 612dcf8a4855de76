"""The runnable examples, in their fast mode."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name):
    return runpy.run_path(str(EXAMPLES / name), run_name="example")["main"]


def test_fit_frame_example_fits_the_synthetic_frame(tmp_path, capsys):
    assert example("fit_frame.py")(["--fast", "--device", "cpu", "--out", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert "IoU" in out and "keypoint error against the truth" in out
    assert (tmp_path / "f" / "overlay.png").exists() and (tmp_path / "f" / "mesh.obj").exists()


def test_track_sequence_example_writes_one_fit_per_frame(shared_dir, tmp_path, capsys):
    folder = shared_dir / "data" / "sr305" / "20210326-230536"
    argv = [str(folder), "--limit", "3", "--shape-frames", "2", "--fast", "--device", "cpu", "--out", str(tmp_path)]
    assert example("track_sequence.py")(argv) == 0
    out = capsys.readouterr().out
    assert out.count("IoU") == 3 and "3 frames in" in out
    assert len(list(tmp_path.glob("*/params.json"))) == 3


def test_adapt_to_my_camera_example_runs_every_step(shared_dir, tmp_path, capsys):
    folder = shared_dir / "data" / "sr305" / "20210326-231615"
    assert example("adapt_to_my_camera.py")(["--tiny", "--frames", str(folder), "--device", "cpu",
                                             "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for step in ("1. 8 synthetic samples", "2. trained 1 epochs", "3. adapted 1 epochs on 3 frames", "4. fitted"):
        assert step in out
    assert (tmp_path / "adapted" / "last.pt").is_file() and (tmp_path / "fit" / "params.json").is_file()


def test_extract_texture_example_writes_the_textured_glb_and_picture(tmp_path, capsys):
    argv = ["--fast", "--frames", "2", "--size", "128", "--device", "cpu", "--out", str(tmp_path)]
    assert example("extract_texture.py")(argv) == 0
    out = capsys.readouterr().out
    assert out.count("IoU") == 2 and "PSNR" in out
    for name in ("hand.glb", "hand.obj", "hand.mtl", "texture.png", "confidence.png", "picture.png"):
        assert (tmp_path / name).is_file(), name
