"""Unsupervised adaptation of the depth initializer (handfit adapt): energy, no labels, resume, errors."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import fitting.synth_dataset as synth_dataset
from fitting import Fitter
from fitting.adaptation import AdaptOptions, FrameCrops, adapt, adaptation_energy
from fitting.cli import main
from fitting.initializer import DepthInitializer, load_checkpoint, load_initializer, save_checkpoint
from fitting.synth_dataset import SHIFTED, SynthOptions, generate
from hands import HandModel

SMALL = dict(width=160, height=120, fx=119.0, fy=119.0, progress=False)
SIZE = 32  # the network's input and the energy's working size in these tests
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def frames(hand_model, tmp_path_factory):
    """A folder of 6 unlabeled depth PNGs of a domain-shifted synthetic set and its camera.json:
    no dataframe, vertices or segmentation (the labels stay in another folder)."""
    base = tmp_path_factory.mktemp("adaptation")
    generate(hand_model, base / "ds", SynthOptions(samples=6, chunk_size=6, seed=21, **SMALL, **SHIFTED))
    folder = base / "frames"
    folder.mkdir()
    for png in sorted((base / "ds" / "chunk_0000" / "depth").glob("*.png")):
        shutil.copy(png, folder / png.name)
    cam = json.loads((base / "ds" / "camera.json").read_text())
    (folder / "camera.json").write_text(json.dumps({k: cam[k] for k in ("fx", "fy", "cx", "cy", "width", "height")}))
    return folder


@pytest.fixture(scope="module")
def checkpoint(hand_model, tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("adaptation_ckpt") / "start.pt"
    return save_checkpoint(path, DepthInitializer(HandModel(hand_model.data), size=SIZE), epoch=1)


@pytest.fixture()
def no_labels(monkeypatch):
    """Any attempt to read a synthetic chunk's labels fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the adaptation read a label file")
    monkeypatch.setattr(synth_dataset, "read_chunk", refuse)


def _options(**kw):
    return AdaptOptions(**{**dict(epochs=1, batch_size=3, lr=1e-3, renderer="splat", working_size=SIZE,
                                  device="cpu"), **kw})


def _energy(path, hand_model, crops, options):
    hand = HandModel(hand_model.data)
    net = load_initializer(path, hand)
    fitter = Fitter(hand, options.renderer, options.fit_config(net.box_mm), device="cpu")
    with torch.no_grad():
        return adaptation_energy(net, fitter, crops)[0]


def test_a_few_adaptation_steps_lower_the_unsupervised_energy_without_labels(hand_model, frames, checkpoint,
                                                                              tmp_path, no_labels):
    options = _options(epochs=4, batch_size=6)
    data = FrameCrops(frames, None, 220.0, SIZE)
    crops = [data[i] for i in range(len(data))]
    assert all(c is not None for c in crops)
    before = _energy(checkpoint, hand_model, crops, options)
    history = adapt(frames, checkpoint, tmp_path / "out", HandModel(hand_model.data), options)
    after = _energy(tmp_path / "out" / "last.pt", hand_model, crops, options)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and all(h["frames"] == 6 for h in history)
    assert {"silhouette", "depth", "penetration", "energy"} <= set(history[0])
    assert history[-1]["energy"] < history[0]["energy"]
    assert float(after.mean()) < 0.9 * float(before.mean())
    # the adapted checkpoint is the train-init format: a network start takes it
    fitter = Fitter(HandModel(hand_model.data), "splat", init="network", checkpoint=tmp_path / "out" / "best.pt")
    assert fitter.initializer.size == SIZE


def test_the_adaptation_energy_follows_the_device_and_dtype(hand_model, frames, device, dtype):
    options = _options()
    data = FrameCrops(frames, None, 220.0, SIZE)
    hand = HandModel(hand_model.data).to(device, dtype)
    torch.manual_seed(0)
    net = DepthInitializer(hand, size=SIZE).to(device, dtype)
    fitter = Fitter(hand, "splat", options.fit_config(220.0))
    energy, terms = adaptation_energy(net, fitter, [data[0], data[1]])
    assert energy.shape == (2,) and energy.dtype == dtype and energy.device.type == device.type
    assert all(v.dtype == dtype for v in terms.values())
    energy.sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)


def test_adapt_resumes_and_mixes_labelled_synthetic_batches(hand_model, frames, checkpoint, tmp_path, capsys):
    ds = tmp_path / "syn"
    generate(hand_model, ds, SynthOptions(samples=4, chunk_size=4, seed=5, **SMALL))
    out = tmp_path / "out"
    flags = [str(frames), "--checkpoint", str(checkpoint), "--out", str(out), "--working-size", str(SIZE),
             "--batch-size", "3", "--renderer", "splat", "--device", "cpu", "--synthetic", str(ds),
             "--synthetic-weight", "0.5", "--lr", "1e-3"]
    assert main(["adapt", *flags, "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "adapt epoch 1/1: energy" in printed and "synthetic loss" in printed
    first = load_checkpoint(out / "last.pt", hand_model)
    assert first["epoch"] == 1 and first["history"][0]["synthetic_loss"] > 0
    assert first["extra"]["adapted_from"] == str(checkpoint) and first["extra"]["synthetic_weight"] == 0.5
    assert first["extra"]["synthetic_crop"] == "mask"
    # resumed: the second run adapts epoch 2 only, from the saved weights and Adam's state
    assert main(["adapt", *flags, "--epochs", "2"]) == 0
    second = load_checkpoint(out / "last.pt", hand_model)
    assert second["epoch"] == 2 and len(second["history"]) == 2 and second["history"][0] == first["history"][0]
    steps = [int(s["step"]) for s in second["optimizer"]["state"].values()]
    assert steps and all(s == 2 * int(first["optimizer"]["state"][0]["step"]) for s in steps)
    assert second["extra"]["adapted_from"] == str(checkpoint)
    assert "adapt epoch 2/2" in capsys.readouterr().out
    # a finished run does nothing more
    assert main(["adapt", *flags, "--epochs", "2", "--quiet"]) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_adapt_under_torchrun_with_two_gloo_ranks(frames, checkpoint, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "fitting.cli", "adapt", str(frames), "--checkpoint",
           str(checkpoint), "--out", str(out), "--epochs", "1", "--working-size", str(SIZE), "--batch-size", "3",
           "--renderer", "splat", "--device", "cpu", "--quiet"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("1 epochs; last:") == 1  # rank 0 reports
    doc = load_checkpoint(out / "last.pt")
    assert doc["extra"]["world_size"] == 2 and doc["history"][0]["frames"] == 6  # 3 frames on each rank


@pytest.mark.parametrize("argv, message", [
    (["adapt", "/nonexistent/frames", "--checkpoint", "CKPT", "--out", "OUT"], "does not exist"),
    (["adapt", "FRAMES", "--checkpoint", "/nonexistent.pt", "--out", "OUT"], "no such checkpoint"),
    (["adapt", "NOCAM", "--checkpoint", "CKPT", "--out", "OUT"], "no camera"),
    (["adapt", "EMPTY", "--checkpoint", "CKPT", "--out", "OUT", "--working-size", "32"], "no frame with a findable hand"),
    (["adapt", "FRAMES", "--checkpoint", "CKPT", "--out", "OUT", "--lr", "0"], "learning rate"),
    (["adapt", "FRAMES", "--checkpoint", "CKPT", "--out", "OUT", "--synthetic-weight", "2"], "no --synthetic"),
    (["adapt", "FRAMES", "--checkpoint", "CKPT", "--out", "OUT", "--synthetic", "/nonexistent"], "no finished chunk"),
    (["adapt", "FRAMES", "--checkpoint", "FRAMES/000000.png", "--out", "OUT"], "not a readable checkpoint"),
])
def test_adapt_bad_input_is_a_one_line_error(frames, checkpoint, tmp_path, capsys, argv, message):
    nocam = tmp_path / "nocam"
    nocam.mkdir()
    shutil.copy(frames / "000000.png", nocam / "000000.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    iio.imwrite(empty / "0.png", np.zeros((120, 160), np.uint16))
    shutil.copy(frames / "camera.json", empty / "camera.json")
    subs = {"FRAMES": str(frames), "CKPT": str(checkpoint), "OUT": str(tmp_path / "o"), "NOCAM": str(nocam),
            "EMPTY": str(empty)}
    argv = [next((a.replace(k, v) for k, v in subs.items() if a.startswith(k)), a) for a in argv]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("handfit: error:") and message in err and "\n" not in err


def test_a_false_forearm_cut_does_not_pull_the_adaptation(hand_model, frames):
    """ADAPT_WEIGHTS: the fitter's wrist term is left out of the adaptation's energy unless asked."""
    import dataclasses

    from fitting.config import WRIST_WEIGHT

    data = FrameCrops(frames, None, 220.0, SIZE)
    crop = data[0]
    far = dataclasses.replace(crop, wrist_mm=crop.centre_mm + torch.tensor([0.0, 235.0, 0.0]))
    hand = HandModel(hand_model.data)
    torch.manual_seed(0)
    net = DepthInitializer(hand, size=SIZE).eval()
    for options, pulls in ((_options(), False), (_options(weights={"wrist": WRIST_WEIGHT}), True)):
        fitter = Fitter(hand, "splat", options.fit_config(220.0), device="cpu")
        with torch.no_grad():
            (plain, _), (cut, terms) = adaptation_energy(net, fitter, [crop]), adaptation_energy(net, fitter, [far])
        assert ("wrist" in terms) == pulls
        assert (float(cut[0]) > float(plain[0]) + 1.0) == pulls  # 1e-4 * (about 200 mm)^2 = 4


def test_the_wrist_flag_puts_the_wrist_term_back(frames, checkpoint, tmp_path):
    flags = [str(frames), "--checkpoint", str(checkpoint), "--working-size", str(SIZE), "--batch-size", "3",
             "--renderer", "splat", "--device", "cpu", "--epochs", "1", "--max-steps", "1", "--quiet"]
    assert main(["adapt", *flags, "--out", str(tmp_path / "plain")]) == 0
    assert main(["adapt", *flags, "--out", str(tmp_path / "wrist"), "--wrist"]) == 0
    assert "wrist" not in load_checkpoint(tmp_path / "plain" / "last.pt")["history"][0]
    assert "wrist" in load_checkpoint(tmp_path / "wrist" / "last.pt")["history"][0]
