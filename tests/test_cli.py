"""The command line: bad input ends in a one-line error and exit status 2; a fit writes its files."""

import imageio.v3 as iio
import numpy as np
import pytest

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
