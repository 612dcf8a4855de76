"""Fits and sequence runs are bit-identical on the CPU, whatever the load and the thread count.

The cause this guards against (issue 15, :mod:`fitting.determinism`): the CPU backward pass of
advanced indexing (``verts[:, faces]``, ``flat[pf]``) adds float32 gradients with atomic
adds from several threads, in an order that follows the threads' timing.
"""

import contextlib

import numpy as np
import pytest
import torch

from fitting import Fitter, Observation
from fitting.config import preview_config
from fitting.determinism import deterministic
from fitting.sequence import SequenceOptions, fit_sequence
from fitting.synthetic import random_hand_parameters, render_depth_frame, smooth_trajectory, write_depth_png
from renderers import Camera, SoftRasterizer

#: A half-resolution SR305-like camera (as in test_sequence.py): cheap renders and segmentation.
CAMERA = dict(fx=238.0, fy=238.0, cx=159.5, cy=119.5, width=320, height=240)
N_FRAMES = 3


def config(**kw):
    """Preview stages on 32 px crops, three in-plane hypotheses: a fit takes about a second.

    The odd batch of the 3 hypotheses matters: the atomic adds of the backward pass of
    ``verts[:, faces]`` are split over 2 threads by element of (B, F, 3, 3), and only with an
    odd B does one frame's gradient straddle the split (the default config has 5 hypotheses
    and 3 shape frames; a sequence's shape frames are one batch).
    """
    return preview_config(working_size=32, angles_deg=(-15.0, 0.0, 15.0), **kw)


@contextlib.contextmanager
def num_threads(n):
    """``torch.set_num_threads(n)`` for the block, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def param_bytes(results):
    return [{k: v.numpy().tobytes() for k, v in r.params.items()} | {"keypoints": r.keypoints.numpy().tobytes()}
            for r in results]


# -- the cause, and the switch ---------------------------------------------------------------
def indexing_grad(x, index, grad):
    return torch.autograd.grad(x[index], x, grad)[0]


def test_indexing_backward_is_the_same_at_any_thread_count_inside_the_context():
    g = torch.Generator().manual_seed(0)
    # more than GRAIN_SIZE (32768) elements and many repeats per row: the atomic-add path
    x = torch.randn(2000, 3, 3, generator=g, requires_grad=True)
    index = torch.randint(0, 2000, (40000,), generator=g)
    grad = torch.randn(40000, 3, 3, generator=g)
    with deterministic("cpu"):
        with num_threads(1):
            serial = indexing_grad(x, index, grad)
        with num_threads(2):
            for _ in range(5):
                assert torch.equal(indexing_grad(x, index, grad), serial)


def test_the_context_is_cpu_only_restores_the_settings_and_nests():
    import torch.utils.deterministic as det

    assert not torch.are_deterministic_algorithms_enabled()
    fill = det.fill_uninitialized_memory
    with deterministic("cpu"):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert not det.fill_uninitialized_memory
        with deterministic(torch.device("cpu")):
            assert torch.are_deterministic_algorithms_enabled()
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled() and det.fill_uninitialized_memory == fill
    with deterministic("cpu", enabled=False):
        assert not torch.are_deterministic_algorithms_enabled()
    with deterministic("meta"):
        assert not torch.are_deterministic_algorithms_enabled()


def test_fit_config_deterministic_must_be_a_bool():
    with pytest.raises(ValueError, match="deterministic"):
        preview_config(deterministic="yes")


# -- fits ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trajectory(hand_model):
    g = torch.Generator().manual_seed(3)
    start = random_hand_parameters(hand_model, g)
    end = {k: v.clone() for k, v in start.items()}
    end["transl"] = end["transl"] + torch.tensor([[20.0, -10.0, 15.0]])
    end["theta"] = end["theta"] + 0.2
    renderer = SoftRasterizer()
    return [render_depth_frame(hand_model, renderer, p, Camera(**CAMERA), g)[0]
            for p in smooth_trajectory(start, end, N_FRAMES)]


# Two threads (even on a one-core machine) are what takes the atomic-add path; one is serial.
def test_a_fit_is_bit_identical_run_to_run_and_at_another_thread_count(hand_model, trajectory):
    fitter = Fitter(hand_model, config=config())
    frame = Observation(depth=trajectory[0], camera=Camera(**CAMERA))
    with num_threads(2):
        first = param_bytes([fitter.fit(frame)])
        assert not torch.are_deterministic_algorithms_enabled()  # the fit put the setting back
        assert param_bytes([fitter.fit(frame)]) == first
    with num_threads(1):
        assert param_bytes([fitter.fit(frame)]) == first


def test_sequence_runs_and_a_resumed_run_write_byte_identical_results(hand_model, trajectory, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, depth in enumerate(trajectory):
        write_depth_png(frames / f"{i}.png", depth)
    fitter = Fitter(hand_model, config=config())
    # one shape frame and no re-acquisition keep a run to a few seconds
    options = dict(shape_frames=1, recover_iou=0.0, depth_scale=0.125, progress=False)

    def run(name, threads=2, **kw):
        with num_threads(threads):
            return fit_sequence(frames, tmp_path / name, fitter, Camera(**CAMERA), SequenceOptions(**options, **kw))

    # on a loaded machine two threads cost several times one (OpenMP waits for a preempted
    # thread at every op), so half of the runs use one
    assert run("a").complete
    assert run("b", threads=1).complete
    stopped = run("resumed", threads=1, max_frames=1)  # "killed" after the shape and one frame
    assert stopped.fitted == ["0"] and not stopped.complete
    resumed = run("resumed")
    assert resumed.skipped == ["0"] and resumed.fitted == ["1", "2"] and resumed.complete

    def files(name):
        out = tmp_path / name
        return {p.relative_to(out).as_posix(): p.read_bytes()
                for p in sorted([out / "shape.npz", *out.glob("*/result.npz")])}

    a = files("a")
    assert len(a) == N_FRAMES + 1
    for name in ("b", "resumed"):
        other = files(name)
        assert other.keys() == a.keys()
        for key in a:
            assert other[key] == a[key], f"{name}/{key} differs from a/{key}"
