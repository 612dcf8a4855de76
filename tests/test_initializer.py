"""The depth initializer network: shapes, training, checkpoints, DDP gradients, train-init."""

import dataclasses
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fitting import InputError
from fitting.cli import main
from fitting.initializer import (DepthInitializer, _Cached, _targets, initializer_loss, load_checkpoint,
                                 load_initializer, save_checkpoint)
from fitting.synth_dataset import SynthDataset, SynthOptions, generate
from hands import HandModel

SMALL = dict(width=160, height=120, fx=119.0, fy=119.0, progress=False)
SIZE = 32  # crop side for the tests (the network's default is 96)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(hand_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("initializer") / "ds"
    generate(hand_model, out, SynthOptions(samples=16, chunk_size=16, seed=7, **SMALL))
    return out


@pytest.fixture(scope="module")
def batch(hand_model, dataset):
    items = [_Cached(SynthDataset(dataset, hand_model, size=SIZE))[i] for i in range(8)]
    b = torch.utils.data.default_collate(items)
    b["vertices"] = _targets(hand_model, b["params"], torch.device("cpu"), torch.float32)
    return b


def test_forward_shapes_follow_the_input_device_and_dtype(hand_model, device, dtype):
    hand = HandModel(hand_model.data).to(device, dtype)
    net = DepthInitializer(hand, size=SIZE).to(device, dtype)
    out = net(torch.rand(3, 1, SIZE, SIZE, device=device, dtype=dtype) * 2 - 1)
    D, V, S = hand.num_dofs, hand.num_vertices, hand.num_shapes
    assert out.keypoints.shape == (3, 21, 3) and out.vertices.shape == (3, V, 3)
    assert out.rotation.shape == (3, 3, 3) and out.transl.shape == (3, 3)
    assert out.theta.shape == (3, D) and out.alpha.shape == (3, 6) and out.beta.shape == (3, S)
    for t in (out.keypoints, out.vertices, out.theta):
        assert t.device.type == device.type and t.dtype == dtype
    # the predicted angles are within the joint limits; the rotation is a rotation
    assert bool(((out.theta >= hand.dof_lower) & (out.theta <= hand.dof_upper)).all())
    eye = torch.eye(3, device=device, dtype=dtype).expand(3, 3, 3)
    assert torch.allclose(out.rotation @ out.rotation.transpose(1, 2), eye, atol=1e-5)
    # the parameters regenerate the prediction through the hand model
    p = out.parameters()
    again = hand(**p)
    assert torch.allclose(again.keypoints, out.keypoints, atol=1e-3)
    with pytest.raises(ValueError, match="depth must be"):
        net(torch.zeros(1, 1, SIZE + 16, SIZE, device=device, dtype=dtype))


def test_a_few_training_steps_lower_the_deephps_loss(hand_model, batch):
    torch.manual_seed(0)
    net = DepthInitializer(hand_model, size=SIZE, dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss, parts = initializer_loss(net(batch["depth"]), batch["keypoints"], batch["vertices"], net.box_mm)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert parts["joints"] > 0 and parts["vertices"] > 0
    assert losses[-1] < 0.85 * losses[0] and losses[-1] < min(losses[:6]), losses


def test_a_checkpoint_round_trips_and_another_model_or_crop_is_refused(hand_model, hand_data, batch, tmp_path):
    torch.manual_seed(1)
    net = DepthInitializer(hand_model, size=SIZE).eval()
    path = save_checkpoint(tmp_path / "net.pt", net, epoch=3, history=[{"epoch": 3}])
    loaded = load_initializer(path, hand_model, box_mm=220.0, size=SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(batch["depth"]).keypoints, net(batch["depth"]).keypoints)
    doc = load_checkpoint(path, hand_model)
    assert doc["epoch"] == 3 and doc["hand"]["num_vertices"] == hand_model.num_vertices
    assert doc["crop"] == {"box_mm": 220.0, "size": SIZE}
    assert not any(k.startswith("hand.") for k in doc["network"])  # the hand model is not stored

    other = HandModel(dataclasses.replace(hand_data, source="another hand"))
    with pytest.raises(InputError, match="another hand model") as err:
        load_initializer(path, other)
    assert "\n" not in str(err.value)
    renamed = list(hand_data.dof_names)
    renamed[0] = "thumb_twist"
    with pytest.raises(InputError, match="DoF"):
        load_checkpoint(path, HandModel(dataclasses.replace(hand_data, dof_names=renamed)))
    with pytest.raises(InputError, match="150 mm"):
        load_initializer(path, hand_model, box_mm=150.0)
    with pytest.raises(InputError, match="64 px"):
        load_initializer(path, hand_model, size=64)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(junk)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_with_two_gloo_processes_gives_the_gradients_of_one_process(hand_model, batch, tmp_path):
    b = {"depth": batch["depth"].double(), "keypoints": batch["keypoints"].double(),
         "vertices": batch["vertices"].double()}
    torch.save(b, tmp_path / "batch.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(ROOT / "tests" / "ddp_grad_worker.py"), str(tmp_path / "batch.pt"),
           str(tmp_path / "grads.pt")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ddp = torch.load(tmp_path / "grads.pt")
    torch.manual_seed(0)  # the worker's initialization
    hand = HandModel(hand_model.data).to(torch.float64)
    net = DepthInitializer(hand, size=SIZE, dropout=0.0).to(torch.float64)
    loss, _ = initializer_loss(net(b["depth"]), b["keypoints"], b["vertices"], net.box_mm)
    loss.backward()
    assert set(ddp) == {k for k, _ in net.named_parameters()}
    for name, p in net.named_parameters():
        assert torch.allclose(ddp[name], p.grad, rtol=1e-8, atol=1e-12), name
    assert any(float(p.grad.abs().max()) > 0 for p in net.parameters())


def test_train_init_logs_checkpoints_and_resumes(dataset, tmp_path, capsys):
    out = tmp_path / "ckpt"
    flags = [str(dataset), "--out", str(out), "--size", str(SIZE), "--batch-size", "8", "--device", "cpu",
             "--val-fraction", "0.25"]
    assert main(["train-init", *flags, "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1: loss" in printed and "validation MPJPE" in printed
    first = load_checkpoint(out / "last.pt")
    assert first["epoch"] == 1 and (out / "best.pt").is_file() and first["history"][0]["val_mpjpe_mm"] > 0
    assert first["extra"]["train_samples"] == 12 and first["extra"]["val_samples"] == 4
    # resumed: the second run trains epoch 2 only, from the saved weights and optimizer state
    assert main(["train-init", *flags, "--epochs", "2"]) == 0
    second = load_checkpoint(out / "last.pt")
    assert second["epoch"] == 2 and second["history"][0] == first["history"][0]
    steps = [s["step"] for s in second["optimizer"]["state"].values()]
    assert steps and all(int(s) == 2 * int(first["optimizer"]["state"][0]["step"]) for s in steps)
    assert "epoch 2/2" in capsys.readouterr().out


def test_train_init_under_torchrun_trains_with_two_gloo_ranks(dataset, tmp_path):
    out = tmp_path / "ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "fitting.cli", "train-init", str(dataset), "--out", str(out),
           "--epochs", "1", "--size", str(SIZE), "--batch-size", "4", "--device", "cpu", "--quiet",
           "--val-fraction", "0.25"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("1 epochs; last:") == 1  # rank 0 reports
    doc = load_checkpoint(out / "last.pt")
    assert doc["extra"]["world_size"] == 2 and doc["extra"]["val_samples"] == 4
    assert doc["history"][0]["val_mpjpe_mm"] > 0


@pytest.mark.parametrize("argv, message", [
    (["train-init", "/nonexistent/ds", "--out", "OUT"], "no finished chunk"),
    (["train-init", "DS", "--out", "OUT", "--lr", "-1"], "learning rate"),
    (["train-init", "DS", "--out", "OUT", "--size", "50"], "multiple of 16"),
    (["train-init", "DS", "--out", "OUT", "--device", "cuda:7"], "device"),
])
def test_train_init_bad_input_is_a_one_line_error(dataset, tmp_path, capsys, argv, message):
    argv = [a.replace("DS", str(dataset)).replace("OUT", str(tmp_path / "o")) for a in argv]
    if "--device" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("handfit: error:") and message in err and "\n" not in err


# -- the fitter starting from the network -------------------------------------------------------
@pytest.fixture(scope="module")
def frame(hand_model):
    from fitting.observation import Observation
    from fitting.synthetic import random_hand_parameters, render_depth_frame
    from renderers import Camera, HybridRenderer

    g = torch.Generator().manual_seed(5)
    truth = random_hand_parameters(hand_model, g)
    camera = Camera(fx=119.0, fy=119.0, cx=79.5, cy=59.5, width=160, height=120)
    depth, mask = render_depth_frame(hand_model, HybridRenderer(), truth, camera, g)
    return Observation(depth=depth, camera=camera, mask=mask, name="synthetic"), truth


def _fake_network(net, truth, centre, flipped):
    """Make ``net`` predict ``truth`` (palm-flipped when ``flipped``) for any input."""
    from pytorch3d.transforms import axis_angle_to_matrix

    from fitting.initialize import flip_palm
    from fitting.initializer import InitializerOutput

    p = flip_palm(truth) if flipped else truth

    def forward(depth):
        B = depth.shape[0]
        rep = lambda t: t.to(depth).expand(B, *t.shape[1:])  # noqa: E731
        return InitializerOutput(axis_angle_to_matrix(rep(p["global_orient"])), rep(p["transl"] - centre),
                                 rep(p["theta"]), rep(p["alpha"]), rep(p["beta"]),
                                 depth.new_zeros(B, 21, 3), depth.new_zeros(B, net.hand.num_vertices, 3))
    net.forward = forward


def _angle(a, b):
    from pytorch3d.transforms import axis_angle_to_matrix

    R = axis_angle_to_matrix(a).transpose(-1, -2) @ axis_angle_to_matrix(b)
    return float(torch.arccos(((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)).max())


def test_fitter_network_init_keeps_a_right_guess_takes_a_clearly_better_flip_and_skips_the_search(
        hand_model, frame, tmp_path):
    from fitting import Fitter
    from fitting.config import preview_config
    from fitting.fitter import stack_targets
    from fitting.initialize import network_parameters
    from fitting.preprocess import prepare

    obs, truth = frame
    path = save_checkpoint(tmp_path / "net.pt", DepthInitializer(HandModel(hand_model.data), size=SIZE))
    cfg = preview_config(working_size=48)
    fitter = Fitter(HandModel(hand_model.data), "soft", cfg, init="network", checkpoint=path)
    crop = prepare(obs, cfg.box_mm, cfg.working_size)
    target = stack_targets([crop], [obs], fitter.device, fitter.dtype)
    for flipped in (False, True):
        _fake_network(fitter.initializer, truth, crop.centre_mm, flipped)
        for ratio in (cfg.flip_skip_ratio, math.inf):  # the raw-energy skip rule, and the check always run
            params, spent = network_parameters(fitter, fitter.initializer, [crop], target, skip_ratio=ratio)
            assert _angle(params["global_orient"], truth["global_orient"]) < 0.3, (flipped, ratio)
            # a right guess is clear on its raw energy (no iteration); a flipped one is not: its
            # alternative (the truth) has the lower energy, so both get the short fits
            expect = 2 * cfg.candidate_iterations if (flipped or ratio == math.inf) else 0
            assert int(spent[0]) == expect, (flipped, ratio)
    result = fitter.fit(obs)  # the (flipped) guess, the check, then the stages without the search
    assert result.metrics["search_iterations"] <= 2 * cfg.candidate_iterations
    from fitting.config import GLOBAL_PARAMETERS
    from fitting.fitter import network_stages
    run = network_stages(cfg, tuple(s for s in cfg.stages if not set(s.free) <= GLOBAL_PARAMETERS))
    assert result.metrics["iterations"] <= sum(s.iterations for s in run)
    assert result.metrics["iou"] > 0.85

    import fitting.initializer as initializer
    with pytest.MonkeyPatch.context() as mp:  # an installation without the shipped checkpoint
        mp.setattr(initializer, "DEFAULT_CHECKPOINT", tmp_path / "none.pt")
        with pytest.raises(InputError, match="needs a checkpoint"):
            Fitter(hand_model, "soft", cfg, init="network")
    with pytest.raises(InputError, match="220 mm crop box"):
        Fitter(hand_model, "soft", preview_config(box_mm=150.0), init="network", checkpoint=path)
    with pytest.raises(ValueError, match="init must be"):
        Fitter(hand_model, "soft", cfg, init="guess")


def test_a_network_start_runs_its_own_pose_and_shape_stage_lengths():
    from fitting.config import DEFAULT_STAGES, SHAPE_PARAMETERS, FitConfig
    from fitting.fitter import network_stages

    cfg = FitConfig(network_pose_scale=0.5, network_shape_scale=1.25)
    stages = network_stages(cfg, DEFAULT_STAGES)
    assert [s.name for s in stages] == [s.name for s in DEFAULT_STAGES]
    for old, new in zip(DEFAULT_STAGES, stages):
        assert new.iterations == round(old.iterations * (1.25 if set(old.free) & SHAPE_PARAMETERS else 0.5))
        assert (new.free, new.render_settings, new.learning_rates) == (old.free, old.render_settings,
                                                                       old.learning_rates)
    assert network_stages(FitConfig(network_pose_scale=1, network_shape_scale=1), DEFAULT_STAGES) == DEFAULT_STAGES
    # the short stages: the fast cold path's lengths and larger shape steps, the pose steps as they were
    from fitting.config import FAST_NETWORK_START
    short = FitConfig(**FAST_NETWORK_START)
    for old, new in zip(DEFAULT_STAGES, network_stages(short, DEFAULT_STAGES)):
        shape = set(old.free) & SHAPE_PARAMETERS
        assert new.iterations == max(1, round(old.iterations * (short.network_shape_scale if shape
                                                                  else short.network_pose_scale)))
        for n in old.free:
            base = old.learning_rates.get(n, short.learning_rates[n])
            scale = short.network_shape_lr_scale if n in SHAPE_PARAMETERS else 1.0
            assert new.learning_rates.get(n, short.learning_rates[n]) == pytest.approx(base * scale)
    assert sum(s.iterations for s in network_stages(short, DEFAULT_STAGES)) < \
        sum(s.iterations for s in network_stages(FitConfig(), DEFAULT_STAGES))
    for bad in (dict(network_pose_scale=0), dict(network_shape_scale=math.inf), dict(flip_skip_ratio=0),
                dict(flip_skip_ratio=True), dict(network_shape_lr_scale=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FitConfig(**bad)


def test_the_shipped_checkpoint_loads_for_the_default_hand_and_predicts_finite_parameters(hand_data, frame):
    import dataclasses as dc

    from fitting import Fitter
    from fitting.adaptation import prediction_metrics
    from fitting.config import preview_config
    from fitting.initialize import network_input
    from fitting.initializer import DEFAULT_CHECKPOINT
    from fitting.preprocess import prepare

    assert DEFAULT_CHECKPOINT.is_file() and DEFAULT_CHECKPOINT.stat().st_size < 8_000_000
    doc = load_checkpoint(DEFAULT_CHECKPOINT, HandModel(hand_data), box_mm=220.0, size=96)
    assert "optimizer" not in doc
    assert all(v.dtype == torch.float16 for v in doc["network"].values() if v.is_floating_point())
    cfg = preview_config(working_size=48)
    fitter = Fitter(HandModel(hand_data), "soft", cfg, init="network")  # no checkpoint: the shipped one
    net = fitter.initializer
    assert net is not None and net.size == 96 and next(net.parameters()).dtype == torch.float32
    obs, _ = frame
    crop = prepare(obs, cfg.box_mm, cfg.working_size)
    x, centre = network_input([crop], net.box_mm, net.size)
    with torch.no_grad():
        params = net(x).parameters(centre)
    assert all(bool(torch.isfinite(v).all()) for v in params.values())
    hand = fitter.model
    assert bool(((params["theta"] >= hand.dof_lower) & (params["theta"] <= hand.dof_upper)).all())
    # a trained network: its direct prediction covers much of the hand's silhouette
    assert float(prediction_metrics(net, fitter, [crop])["iou"][0]) > 0.4
    # another hand model has no shipped checkpoint
    with pytest.raises(InputError, match="for this hand model"):
        Fitter(HandModel(dc.replace(hand_data, source="another hand")), "soft", cfg, init="network")
