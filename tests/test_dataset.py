"""fit-dataset: batched fits equal one-by-one fits, failures, resuming, file lists, torchrun."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from torch.profiler import profile

from fitting import Fitter, FitConfig, InputError, Stage, SHARP_SILHOUETTE
from fitting import fitter as fitter_module
from fitting.cli import main
from fitting.dataset import DatasetItem, DatasetOptions, fit_dataset, list_dataset
from fitting.fitter import stack_targets
from fitting.preprocess import prepare
from fitting.synthetic import SR305_CAMERA, random_hand_parameters, render_depth_frame
from renderers import Camera, make_renderer

ROOT = Path(__file__).resolve().parents[1]
CAMERA = dict(fx=238.0, fy=238.0, cx=159.5, cy=119.5, width=320, height=240)
DEPTH_SCALE = 0.125
FAST_STAGES = (
    Stage("global", ("global_orient", "transl"), 6, SHARP_SILHOUETTE),
    Stage("articulation", ("global_orient", "transl", "theta"), 8, SHARP_SILHOUETTE),
)
#: A frame fitted in a batch gives its one-by-one result up to float rounding: the batched
#: kernels (matrix products, reductions) round differently, and a few hundred iterations of
#: the fit amplify that a little. Measured on these frames: below 1e-3 mm.
BATCH_TOLERANCE_MM = 0.01


def fast_config():
    return FitConfig(stages=FAST_STAGES, working_size=48, angles_deg=(0.0,), candidate_iterations=4,
                     hypothesis_iterations=4)


def write_frames(folder: Path, n: int, seed: int = 3, zero: tuple[int, ...] = ()) -> Path:
    """n synthetic 16-bit depth frames (0.125 mm units) and a camera.json; frames in ``zero``
    are all zero."""
    from hands import load_hand

    model = load_hand("default")
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        depth, _ = render_depth_frame(model, make_renderer("soft"), random_hand_parameters(model, g),
                                      Camera(**CAMERA), g)
        if i in zero:
            depth = torch.zeros_like(depth)
        iio.imwrite(folder / f"{i}.png", (depth / DEPTH_SCALE).round().clamp(0, 65535).numpy().astype(np.uint16))
    (folder / "camera.json").write_text(json.dumps(CAMERA))
    return folder


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("dataset") / "frames", 4)


#: The finished frames' files (not those in a ``.<name>.tmp`` folder of a write in flight).
FINISHED = "[!.]*/params.json"


def keypoints(out: Path) -> dict:
    return {p.parent.name: np.array(json.loads(p.read_text())["keypoints"]) for p in out.glob(FINISHED)}


def test_a_batch_fits_like_one_by_one_and_a_blank_frame_fails_alone(hand_model, frames, tmp_path):
    fitter = Fitter(hand_model, "soft", fast_config())
    options = dict(depth_scale=DEPTH_SCALE, progress=False)
    alone = fit_dataset(frames, tmp_path / "alone", fitter, options=DatasetOptions(batch_size=1, **options))
    batch = fit_dataset(frames, tmp_path / "batch", fitter, options=DatasetOptions(batch_size=4, **options))
    assert sorted(alone.fitted) == sorted(batch.fitted) == ["0", "1", "2", "3"] and batch.batch_size == 4
    one, four = keypoints(tmp_path / "alone"), keypoints(tmp_path / "batch")
    for name in one:
        assert np.abs(one[name] - four[name]).max() < BATCH_TOLERANCE_MM, name
    summary = json.loads((tmp_path / "batch" / "summary.json").read_text())
    assert summary["finished"] == 4 and not summary["failed"] and 0.0 < summary["means"]["iou"] <= 1.0
    rows = (tmp_path / "batch" / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("name,iou") and len(rows) == 5

    # frame 2 all zero in the same batch: it fails with its reason, the other three are unchanged
    blank = tmp_path / "blank"
    shutil.copytree(frames, blank)
    iio.imwrite(blank / "2.png", np.zeros((CAMERA["height"], CAMERA["width"]), np.uint16))
    # (read and segmented in two DataLoader worker processes)
    report = fit_dataset(blank, tmp_path / "with_blank", fitter,
                         options=DatasetOptions(batch_size=4, workers=2, **options))
    assert sorted(report.fitted) == ["0", "1", "3"] and list(report.failed) == ["2"]
    assert "no valid pixel" in report.failed["2"]
    assert (tmp_path / "with_blank" / "2.error.txt").is_file()
    three = keypoints(tmp_path / "with_blank")
    for name in ("0", "1", "3"):
        assert np.abs(three[name] - one[name]).max() < BATCH_TOLERANCE_MM, name
        metrics = json.loads((tmp_path / "with_blank" / name / "params.json").read_text())["metrics"]
        assert metrics["iou"] > 0.5 and metrics["nan_events"] == 0
    assert sorted(p.name for p in (tmp_path / "with_blank" / "0").iterdir()) == ["params.json", "result.npz"]


def test_a_rerun_skips_finished_frames_and_retries_failures_only_when_asked(hand_model, frames, tmp_path):
    fitter = Fitter(hand_model, "soft", fast_config())
    source = tmp_path / "frames"
    shutil.copytree(frames, source)
    iio.imwrite(source / "9.png", np.zeros((CAMERA["height"], CAMERA["width"]), np.uint16))
    out = tmp_path / "out"
    opts = dict(depth_scale=DEPTH_SCALE, batch_size=2, progress=False)
    first = fit_dataset(source, out, fitter, options=DatasetOptions(max_frames=2, **opts))
    assert first.fitted == ["0", "1"]
    stamps = {n: (out / n / "params.json").stat().st_mtime_ns for n in first.fitted}
    second = fit_dataset(source, out, fitter, options=DatasetOptions(**opts))
    assert second.fitted == ["2", "3"] and list(second.failed) == ["9"] and second.skipped == 2
    assert {n: (out / n / "params.json").stat().st_mtime_ns for n in first.fitted} == stamps
    third = fit_dataset(source, out, fitter, options=DatasetOptions(**opts))
    assert third.fitted == [] and third.failed == {} and third.skipped == 5
    (out / "9.error.txt").write_text("old\n")
    retried = fit_dataset(source, out, fitter, options=DatasetOptions(retry_failed=True, **opts))
    assert retried.fitted == [] and list(retried.failed) == ["9"]
    assert (out / "9.error.txt").read_text() != "old\n"
    assert json.loads((out / "summary.json").read_text())["finished"] == 4


def test_file_lists_resolve_inside_their_root_and_bad_lines_are_one_line_errors(frames, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(frames, data / "seq1")
    (data / "cams").mkdir()
    (data / "cams" / "a.json").write_text(json.dumps(CAMERA))
    listing = data / "frames.txt"
    listing.write_text("# frames\nseq1/0.png cams/a.json\n\nseq1/1.png\n")
    items = list_dataset(listing)
    assert [i.name for i in items] == ["seq1__0", "seq1__1"]
    assert items[0].camera_json == (data / "cams" / "a.json").resolve() and items[1].camera_json is None
    assert [i.name for i in list_dataset(frames)] == ["0", "1", "2", "3"]

    outside = tmp_path / "outside.png"
    shutil.copy(frames / "0.png", outside)
    for text, message in (("../outside.png\n", "lies outside"), ("seq1/7.png\n", "no such frame"),
                          ("seq1/0.png cams/a.json extra\n", "expected 'FRAME' or"),
                          ("seq1/camera.json\n", "is not a depth frame"),
                          ("seq1/0.png cams/none.json\n", "no such camera file"),
                          ("seq1/0.png\n./seq1/0.png\n", "same output name"), ("# nothing\n", "lists no frames")):
        listing.write_text(text)
        with pytest.raises(InputError, match=message) as err:
            list_dataset(listing)
        assert "\n" not in str(err.value)
    link = data / "link.png"
    link.symlink_to(outside)
    listing.write_text("link.png\n")
    with pytest.raises(InputError, match="lies outside"):
        list_dataset(listing)
    listing.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="not a text file list"):
        list_dataset(listing)
    with pytest.raises(InputError, match="does not exist"):
        list_dataset(tmp_path / "nothing")
    for bad in (dict(batch_size=0), dict(workers=-1), dict(files=("mesh.obj",)), dict(files=("params.json", "x.txt"))):
        with pytest.raises(ValueError):
            DatasetOptions(**bad)


def test_frames_take_their_own_camera_and_a_frame_without_one_fails(hand_model, frames, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        shutil.copy(frames / f"{i}.png", data / f"{i}.png")
    (data / "cam.json").write_text(json.dumps(CAMERA))
    wrong = dict(CAMERA, width=640, height=480)
    (data / "wrong.json").write_text(json.dumps(wrong))
    # a 640x480 frame of another camera joins the 320x240 one in the same batch
    g = torch.Generator().manual_seed(8)
    depth, _ = render_depth_frame(hand_model, make_renderer("soft"), random_hand_parameters(hand_model, g),
                                  Camera(**SR305_CAMERA), g)
    iio.imwrite(data / "big.png", (depth / DEPTH_SCALE).round().numpy().astype(np.uint16))
    (data / "big.json").write_text(json.dumps(SR305_CAMERA))
    (data / "list.txt").write_text("0.png cam.json\nbig.png big.json\n1.png wrong.json\n")
    fitter = Fitter(hand_model, "soft", fast_config())
    report = fit_dataset(data / "list.txt", tmp_path / "out", fitter,
                         options=DatasetOptions(depth_scale=DEPTH_SCALE, batch_size=3, progress=False))
    assert report.fitted == ["0", "big"] and "640x480" in report.failed["1"]
    for name, size in (("0", 320), ("big", 640)):
        doc = json.loads((tmp_path / "out" / name / "params.json").read_text())
        assert doc["camera"]["width"] == size and doc["metrics"]["iou"] > 0.5
    (data / "list.txt").write_text("0.png\n")
    report = fit_dataset(data / "list.txt", tmp_path / "out2", fitter,
                         options=DatasetOptions(depth_scale=DEPTH_SCALE, progress=False))
    assert "no camera" in report.failed["0"]


def test_the_cli_reports_bad_input_in_one_line(frames, tmp_path, capsys):
    assert main(["fit-dataset", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert main(["fit-dataset", str(frames), "--out", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["fit-dataset", str(frames), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("handfit: error: ") for line in err)


def test_the_optimizer_loop_adds_no_host_syncs(hand_model, frames, monkeypatch):
    """What would stall a GPU (a tensor read back to the host: ``item``, ``nonzero``, boolean
    indexing) happens only inside the energy (the renderer's pair lists), never in the
    optimizer's bookkeeping: counted with the profiler on the CPU, where the same ops run."""
    from fitting.io import read_depth
    from fitting.observation import Observation

    monkeypatch.setattr(fitter_module, "_early_exit_interval", lambda device: 10 ** 6)
    fitter = Fitter(hand_model, "soft", fast_config())
    obs = [Observation(depth=read_depth(frames / f"{i}.png", depth_scale=DEPTH_SCALE), camera=Camera(**CAMERA))
           for i in range(2)]
    target = stack_targets([prepare(o, 220.0, 48) for o in obs])
    init = hand_model.neutral_parameters(2)
    init["transl"] = torch.tensor([[0.0, 0.0, 450.0]]).expand(2, 3).clone()
    stage = (Stage("s", ("global_orient", "transl", "theta"), 5, SHARP_SILHOUETTE),)
    syncs = ("aten::_local_scalar_dense", "aten::nonzero")  # bool(t) and .item() both read a scalar

    def count(fn) -> int:
        with profile() as prof:
            fn()
        return sum(e.count for e in prof.key_averages() if e.key in syncs)

    def one_energy(surface: bool):
        params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
        terms, _, _ = fitter.energy_terms(params, target, surface, SHARP_SILHOUETTE)
        fitter.total(terms).sum().backward()

    per_energy, final = count(lambda: one_energy(False)), count(lambda: one_energy(True))
    # 5 iterations + the evaluation of the last step, the final evaluation (with the surface
    # terms, whose PyTorch3D Meshes read sizes back) and the first early-exit check
    in_run = count(lambda: fitter.run(target, init, stages=stage))
    assert 0 < per_energy and in_run <= 6 * per_energy + final + 1, (in_run, per_energy, final)


# -- torchrun --------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _torchrun(frames: Path, out: Path, *extra: str) -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    handfit = Path(sys.executable).with_name("handfit")
    return [str(torchrun), "--nproc_per_node=2", "--master_port", str(29500 + os.getpid() % 1000), "--no-python",
            str(handfit), "fit-dataset", str(frames), "--fast", "--device", "cpu", "--depth-scale", str(DEPTH_SCALE),
            "--out", str(out), *extra]


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="needs torchrun beside python")
def test_torchrun_two_ranks_match_one_process_and_resume_after_a_killed_rank(tmp_path):
    source = write_frames(tmp_path / "frames", 8, seed=11)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = tmp_path / "single"
    assert main(["fit-dataset", str(source), "--fast", "--device", "cpu", "--depth-scale", str(DEPTH_SCALE),
                 "--out", str(single), "--batch-size", "4"]) == 0
    ranks = tmp_path / "ranks"
    run = subprocess.run(_torchrun(source, ranks, "--batch-size", "2"), env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "rank 0/2" in run.stdout and "rank 1/2" in run.stdout and "8/8 frames finished" in run.stdout
    one, two = keypoints(single), keypoints(ranks)
    assert sorted(one) == sorted(two) == [str(i) for i in range(8)]
    for name in one:
        assert np.abs(one[name] - two[name]).max() < BATCH_TOLERANCE_MM, name

    # kill one rank once some frames are written; the rerun fits only the others
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_torchrun(source, killed, "--batch-size", "1"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list(killed.glob(FINISHED))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert workers and proc.poll() is None
    os.kill(workers[-1], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    try:  # no straggler of the launch may still write while the state is read
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(1.0)
    done = {p.parent.name: p.stat().st_mtime_ns for p in killed.glob(FINISHED)}
    assert 2 <= len(done) < 8
    rerun = subprocess.run(_torchrun(source, killed, "--batch-size", "2"), env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert {n: (killed / n / "params.json").stat().st_mtime_ns for n in done} == done
    # the ranks share the pipe, so their lines may interleave: find each rank's report anywhere
    fitted_now = sum(int(n) for n in re.findall(r"rank \d+/2: (\d+) frames fitted", rerun.stdout))
    assert fitted_now == 8 - len(done) and "8/8 frames finished" in rerun.stdout, (rerun.stdout, done)
