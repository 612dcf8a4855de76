"""The command line: bad input ends in a one-line error and exit status 2; a fit writes its files."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from fitting.cli import main

INTRINSICS = ["--fx", "476.007", "--fy", "476.007", "--cx", "313.683", "--cy", "242.755"]


def run(argv, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.err.strip()


def hand_frame(scale_units=8.0):
    """A 640x480 uint16 frame with a hand-sized blob at 450 mm (in units of 1/scale_units mm)."""
    v, u = np.mgrid[:480, :640]
    depth = np.full((480, 640), 1000.0)
    depth[(u - 300) ** 2 + (v - 250) ** 2 < 45 ** 2] = 450.0
    return (depth * scale_units).astype(np.uint16)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such file"),
        ("8bit", "8-bit"),
        ("empty", "no valid pixel"),
        ("noblob", "no valid depth between"),
        ("size", "but the depth frame is"),
        ("principal", "principal point"),
        ("scale", "depth-scale"),
        ("intrinsics", "missing camera intrinsics"),
    ],
)
def test_bad_input_gives_one_line_error(case, expected, tmp_path, capsys):
    frame = tmp_path / "frame.png"
    args = INTRINSICS + ["--depth-scale", "0.125"]
    if case == "8bit":
        iio.imwrite(frame, np.zeros((480, 640), np.uint8))
    elif case == "empty":
        iio.imwrite(frame, np.zeros((480, 640), np.uint16))
    elif case == "noblob":
        iio.imwrite(frame, np.full((480, 640), 40000, np.uint16))  # 5 m away
    elif case == "size":
        iio.imwrite(frame, hand_frame()[:240, :320])
        camera = tmp_path / "camera.json"
        camera.write_text('{"fx": 476, "fy": 476, "cx": 160, "cy": 120, "width": 640, "height": 480}')
        args = ["--camera", str(camera), "--depth-scale", "0.125"]
    elif case == "principal":
        iio.imwrite(frame, hand_frame()[:240, :320])
    elif case == "scale":
        iio.imwrite(frame, hand_frame())
        args = INTRINSICS + ["--depth-scale", "1e6"]
    elif case == "intrinsics":
        iio.imwrite(frame, hand_frame())
        args = ["--fx", "476"]
    status, err = run(["fit", str(frame), *args, "--out", str(tmp_path / "out")], capsys)
    assert status == 2
    assert err.startswith("handfit: error:") and expected in err
    assert len(err.splitlines()) == 1


def test_model_info_prints_the_model_and_its_dof_table(shared_dir, capsys):
    path = shared_dir / "models" / "webxr_hand" / "right.glb"
    assert main(["model", "info", "--model", "gltf", "--model-path", str(path)]) == 0
    out = capsys.readouterr().out
    assert "vertices 1360  faces 2314  joints 25  shape dimensions 1  articulation DoF 20" in out
    assert "index_mcp_flex" in out and "index_proximal" in out
    assert main(["model", "info"]) == 0
    out = capsys.readouterr().out
    assert "vertices 1609  faces 3196  joints 21  shape dimensions 7" in out
    assert len([line for line in out.splitlines() if "_flex" in line or "_abd" in line]) == 20


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--model", "mano"], "--model mano needs --mano-path"),
        (["--model", "gltf"], "--model gltf needs --model-path"),
        (["--mano-path", "x.pkl"], "add --model mano"),
        (["--model", "mano", "--mano-path", "/nonexistent/MANO_RIGHT.pkl"], "no such file"),
        (["--model", "gltf", "--model-path", "/nonexistent/hand.glb"], "no such file"),
    ],
)
def test_bad_model_flags_give_one_line_errors(argv, expected, capsys):
    status, err = run(["model", "info", *argv], capsys)
    assert status == 2 and err.startswith("handfit: error:") and expected in err
    assert len(err.splitlines()) == 1


def test_fit_and_demo_take_the_model_flags():
    from fitting.cli import build_model, build_parser

    parser = build_parser()
    for sub in (["fit", "f.png", "--out", "o"], ["demo"]):
        args = parser.parse_args(sub + ["--model", "gltf", "--model-path", "m.glb"])
        assert (args.model, args.model_path) == ("gltf", "m.glb")
    args = parser.parse_args(["demo"])
    assert build_model(args).num_vertices == 1609  # the default model


def test_device_cuda_without_a_gpu_is_a_one_line_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    status, err = run(["demo", "--device", "cuda", "--fast"], capsys)
    assert status == 2 and err.startswith("handfit: error:") and "no CUDA GPU" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_demo_and_fit_run_end_to_end(tmp_path, capsys):
    """``handfit demo`` writes its synthetic fit; ``handfit fit`` fits the demo's frame again."""
    assert main(["demo", "--fast", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "keypoint error against the known truth" in out and "MPJPE" in out
    doc = json.loads((tmp_path / "demo" / "params.json").read_text())
    assert doc["metrics"]["mpjpe_mm"] < 30.0 and len(doc["keypoints"]) == 21
    frame = tmp_path / "frame.png"
    from fitting.synthetic import SR305_CAMERA, random_hand_parameters, render_depth_frame, write_depth_png
    from hands import load_hand
    from renderers import Camera, make_renderer

    model, g = load_hand(), torch.Generator().manual_seed(1)
    truth = random_hand_parameters(model, g)
    camera = Camera(**SR305_CAMERA)
    depth, _ = render_depth_frame(model, make_renderer("soft"), truth, camera, g)
    write_depth_png(frame, depth)
    assert iio.imread(frame).dtype.name == "uint16"
    with torch.no_grad():  # the true keypoints' pixels, as a 2D detector would give them
        uv = camera.project(model(**truth).keypoints)[0]
    (tmp_path / "kp.json").write_text(json.dumps({"keypoints": uv.tolist()}))
    status = main(["fit", str(frame), *INTRINSICS, "--depth-scale", "0.125", "--fast", "--keypoints",
                   str(tmp_path / "kp.json"), "--out", str(tmp_path / "fit")])
    assert status == 0
    out = capsys.readouterr().out
    assert "IoU" in out and sorted(p.name for p in (tmp_path / "fit").iterdir()) == [
        "energy.csv", "mesh.obj", "overlay.png", "params.json", "result.npz"]
    metrics = json.loads((tmp_path / "fit" / "params.json").read_text())["metrics"]
    assert metrics["keypoints_2d_error_px"] < 20.0, metrics
