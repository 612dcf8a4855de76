"""Frames per second of fitting against the batch size, and of fit-dataset with 1 and 2 processes.

Synthetic SR305-like frames (640x480, 1.5 mm noise, known keypoints) are fitted:

- ``budget``: the optimizer loop alone at a fixed iteration budget (the articulation stage
  from the principal-axis start, convergence off, ``--budget`` iterations): frames per second
  = frames x 1 / seconds, for each batch size and working size. This is what batching buys.
- ``converged``: :meth:`fitting.Fitter.fit` with the default config (segmentation, crop,
  search, stages to convergence) on ``--frames`` frames in batches; also the mean IoU and
  keypoint error against the truth, to show that batching does not change the fit.
- ``processes``: ``handfit fit-dataset`` over the same frames written to a folder, one process
  (``torch`` threads = all cores) against ``torchrun --nproc_per_node=2`` (one thread each).
- ``breakdown``: where the budget loop's time goes, per frame and iteration, for each batch size:
  the hand model, the render, the data-to-model term (each forward + backward) and the whole
  loop, in CPU seconds of this thread (``time.thread_time``, the least of ``--repeats``), so
  that the figures hold on a loaded machine (the wall-clock parts do not): the part that does
  not shrink with the batch size is the per-frame arithmetic that bounds the batching gain.

``--threads 1,2`` runs the budget and converged parts once per torch thread count: at batch 1
most ops are too small to split across threads, at batch 16 the large ones are split. It ends
with the goal's ratio: the largest batch at each thread count against the best batch-1 figure
of any thread count. Measure threads on an idle machine: where other processes hold the cores,
every parallel op waits for a thread that is not running (at load 3.5 on 2 cores, batch 1 at
2 threads ran 0.03 frames/s against 2.0 at one thread).

Last measured (one thread, load 4-6, 96 px, ``--parts budget,converged --batch-sizes 1,4,16``):
budget 1.90 / 3.58 / 5.82 frames per CPU second (batch 16 / batch 1 x3.06; x2.93 in a second
run), converged 0.049 / 0.058 / 0.060 frames/s of wall clock (x1.21). On the idle machine
(``--parts budget --batch-sizes 1,16 --threads 1,2``): 1.74 / 3.99 frames/s at one thread (x2.30),
2.02 / 3.87 at two (x1.92); see README, "Whole datasets". With the CPU Fitter keeping freed
memory (:mod:`fitting.cpu_memory`; ``--malloc default`` measures without it), one thread, load 3-5.6,
``--parts budget --batch-sizes 1,4,16 --frames 4``, alternated with 38e48cb: 1.40 / 3.62 / 4.01 and
1.57 / 3.58 / 4.40 frames per CPU second (x2.88, x2.80) against 1.33 / 3.14 / 3.48 and 1.68 / 3.44 /
4.23 (x2.62, x2.52): the 3x goal is not met yet.

On a CUDA device it also profiles the budget loop and prints the host<->device copies and
synchronizations per iteration (``torch.profiler``).

    .venv/bin/python bench/throughput.py                       # CPU, all parts
    .venv/bin/python bench/throughput.py --device cuda --sizes 96,128 --batch-sizes 1,4,16,64,256
    OMP_NUM_THREADS=1 .venv/bin/python bench/throughput.py --sizes 96 --parts breakdown --batch-sizes 1,16
    .venv/bin/python bench/throughput.py --sizes 96 --parts budget --batch-sizes 1,16 --threads 1,2   # idle machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fitting import Fitter, FitConfig, Observation, Stage, SHARP_SILHOUETTE  # noqa: E402
from fitting.fitter import resolve_device, stack_targets  # noqa: E402
from fitting.initialize import initial_parameters  # noqa: E402
from fitting.preprocess import prepare  # noqa: E402
from fitting.synthetic import SR305_CAMERA, random_hand_parameters, render_depth_frame  # noqa: E402
from hands import load_hand  # noqa: E402
from renderers import Camera, make_renderer  # noqa: E402

DEPTH_SCALE = 0.125


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def make_frames(n: int, seed: int = 0) -> list[tuple[Observation, torch.Tensor]]:
    model = load_hand("default")
    g = torch.Generator().manual_seed(seed)
    camera = Camera(**SR305_CAMERA)
    frames = []
    for i in range(n):
        truth = random_hand_parameters(model, g)
        depth, _ = render_depth_frame(model, make_renderer("hybrid"), truth, camera, g)
        depth = torch.round(depth / DEPTH_SCALE) * DEPTH_SCALE  # what a 16-bit PNG holds
        with torch.no_grad():
            keypoints = model(**truth).keypoints[0]
        frames.append((Observation(depth=depth, camera=camera, name=str(i)), keypoints))
    return frames


def budget_fps(fitter: Fitter, frames, batch: int, budget: int, repeats: int) -> float:
    """Frames per second of ``budget`` articulation iterations for a batch of ``batch`` frames."""
    return budget_rates(fitter, frames, batch, budget, repeats)[0]


def budget_rates(fitter: Fitter, frames, batch: int, budget: int, repeats: int) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second of this process) of ``budget`` articulation
    iterations for a batch of ``batch`` frames; medians of ``repeats`` runs after a warm-up. The
    CPU figure (``time.process_time``, all threads) is what a loaded machine does not change."""
    cfg = fitter.config
    obs = [frames[i % len(frames)][0] for i in range(batch)]
    crops = [prepare(o, cfg.box_mm, cfg.working_size) for o in obs]
    target = stack_targets(crops, device=fitter.device, dtype=fitter.dtype)
    init, _ = initial_parameters(fitter, [c.points_mm for c in crops], target)
    stage = (Stage("articulation", ("global_orient", "transl", "theta"), budget, SHARP_SILHOUETTE),)
    wall, cpu = [], []
    for _ in range(repeats + 1):  # the first is a warm-up
        sync(fitter.device)
        t0, c0 = time.perf_counter(), time.process_time()
        fitter.run(target, init, stages=stage)
        sync(fitter.device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return batch / statistics.median(wall[1:]), batch / statistics.median(cpu[1:])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def converged(fitter: Fitter, frames, batch: int) -> tuple[float, float, float, float]:
    """(frames/s, mean IoU, mean keypoint error mm, mean iterations) of full fits in batches."""
    ious, errors, iterations = [], [], []
    t0 = time.perf_counter()
    for start in range(0, len(frames), batch):
        chunk = frames[start:start + batch]
        results = fitter.fit([o for o, _ in chunk])
        for r, (_, truth) in zip(results, chunk):
            ious.append(r.metrics["iou"])
            errors.append(float((r.keypoints - truth.to(r.keypoints.dtype)).norm(dim=-1).mean()))
            iterations.append(r.metrics["iterations"] + r.metrics["search_iterations"])
    seconds = time.perf_counter() - t0
    return len(frames) / seconds, float(np.mean(ious)), float(np.mean(errors)), float(np.mean(iterations))


def breakdown(fitter: Fitter, frames, batch: int, repeats: int, iterations: int = 10) -> dict:
    """CPU ms of this thread per frame (and iteration) of the budget loop and of its parts."""
    from losses import depth_loss, point_to_vertex_loss, silhouette_loss

    cfg = fitter.config
    crops = [prepare(frames[i % len(frames)][0], cfg.box_mm, cfg.working_size) for i in range(batch)]
    target = stack_targets(crops, device=fitter.device, dtype=fitter.dtype)
    init, _ = initial_parameters(fitter, [c.points_mm for c in crops], target)
    params = fitter.model.neutral_parameters(batch)
    params.update({k: v.detach() for k, v in init.items()})
    for n in ("global_orient", "transl", "theta"):
        params[n] = params[n].clone().requires_grad_(True)
    verts = fitter.model(**params).vertices.detach()
    stage = (Stage("articulation", ("global_orient", "transl", "theta"), iterations, SHARP_SILHOUETTE),)

    def model():
        fitter.model(**params).vertices.sum().backward()

    def render():
        v = verts.clone().requires_grad_(True)
        out = fitter.renderer(v, fitter.model.faces, target.camera, **SHARP_SILHOUETTE)
        (silhouette_loss(out.silhouette, target.mask) + depth_loss(out.depth, target.depth)).sum().backward()

    def points():
        v = verts.clone().requires_grad_(True)
        point_to_vertex_loss(target.points, v, target.point_lengths).sum().backward()

    def loop():
        fitter.run(target, init, stages=stage)

    parts = {"model": (model, 1), "render": (render, 1), "points": (points, 1), "loop": (loop, iterations + 1)}
    out = {}
    for name, (fn, per_call) in parts.items():
        fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.thread_time()
            fn()
            best = min(best, time.thread_time() - t0)
        out[name] = best * 1e3 / per_call / batch
    return out


def profile_copies(fitter: Fitter, frames, batch: int, iterations: int = 20) -> None:
    """Host<->device copies and synchronizations per iteration of the loop (CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = fitter.config
    crops = [prepare(frames[i % len(frames)][0], cfg.box_mm, cfg.working_size) for i in range(batch)]
    target = stack_targets(crops, device=fitter.device, dtype=fitter.dtype)
    init, _ = initial_parameters(fitter, [c.points_mm for c in crops], target)
    stage = (Stage("articulation", ("global_orient", "transl", "theta"), iterations, SHARP_SILHOUETTE),)
    fitter.run(target, init, stages=stage)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fitter.run(target, init, stages=stage)
    counts = {}
    for e in prof.key_averages():
        key = e.key
        if "Memcpy" in key or "cudaMemcpy" in key or "Synchronize" in key or key in (
                "aten::_local_scalar_dense", "aten::nonzero"):
            counts[key] = e.count
    print(f"  profile, batch {batch}, {iterations} iterations (+2 evaluations): "
          + ", ".join(f"{k} {v / iterations:.1f}/it" for k, v in sorted(counts.items())))


def processes(frames, args) -> None:
    """fit-dataset over a folder with 1 process and with torchrun --nproc_per_node=2."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "frames"
        folder.mkdir()
        for obs, _ in frames:
            iio.imwrite(folder / f"{obs.name}.png", (obs.depth / DEPTH_SCALE).round().numpy().astype(np.uint16))
        (folder / "camera.json").write_text(json.dumps(SR305_CAMERA))
        bin_dir = Path(sys.executable).parent
        common = ["fit-dataset", str(folder), "--depth-scale", str(DEPTH_SCALE), "--device", "cpu",
                  "--batch-size", str(args.process_batch)] + (["--fast"] if args.process_fast else [])
        cores = os.cpu_count() or 1
        runs = {
            "1 process": ([str(bin_dir / "handfit"), *common], {"OMP_NUM_THREADS": str(cores)}),
            "2 processes (torchrun)": ([str(bin_dir / "torchrun"), "--nproc_per_node=2", "--no-python",
                                        str(bin_dir / "handfit"), *common],
                                       {"OMP_NUM_THREADS": str(max(1, cores // 2))}),
        }
        base = None
        for label, (cmd, env) in runs.items():
            out = Path(tmp) / label.split()[0]
            t0 = time.perf_counter()
            done = subprocess.run([*cmd, "--out", str(out)], env={**os.environ, **env}, capture_output=True,
                                  text=True)
            seconds = time.perf_counter() - t0
            if done.returncode != 0:
                print(f"  {label}: failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            summary = json.loads((out / "summary.json").read_text())
            fps = summary["finished"] / seconds
            base = base or fps
            print(f"  {label}: {summary['finished']} frames in {seconds:.1f} s (start-up included) = {fps:.3f} "
                  f"frames/s, x{fps / base:.2f}; mean IoU {summary['means'].get('iou', float('nan')):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=ints, default=[96, 128], help="working sizes (px)")
    parser.add_argument("--batch-sizes", type=ints, default=[1, 4, 16, 64], help="batch sizes of the budget part")
    parser.add_argument("--budget", type=int, default=20, help="iterations of the budget part")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the budget part (median)")
    parser.add_argument("--frames", type=int, default=16, help="frames of the converged and processes parts")
    parser.add_argument("--converged-batch-sizes", type=ints, default=[1, 4, 16])
    parser.add_argument("--process-batch", type=int, default=4, help="fit-dataset --batch-size in the processes part")
    parser.add_argument("--process-fast", action="store_true", help="fit-dataset --fast in the processes part")
    parser.add_argument("--threads", type=ints, default=[],
                        help="torch threads to run the budget and converged parts with, one pass each "
                             "(e.g. 1,2; default: torch's own, OMP_NUM_THREADS)")
    parser.add_argument("--parts", default="budget,converged,processes")
    parser.add_argument("--malloc", choices=("kept", "default"), default="kept",
                        help="kept: the Fitter's fitting.cpu_memory.keep_freed_memory (the default); default: "
                             "glibc's own malloc settings (HANDFIT_CPU_MALLOC=default), to measure against")
    args = parser.parse_args()
    if args.malloc == "default":
        os.environ["HANDFIT_CPU_MALLOC"] = "default"  # before the first Fitter
    parts = set(args.parts.split(","))
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"malloc {args.malloc}")
    frames = make_frames(max(args.frames, 4))
    model = load_hand("default")
    rates = {}  # (threads, batch) -> budget frames/s
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for size in args.sizes:
            fitter = Fitter(model, "soft", FitConfig(working_size=size, patience=10 ** 9), device=device)
            if "budget" in parts:
                print(f"budget: {args.budget} iterations at {size} px, {threads} threads")
                base = None
                for batch in args.batch_sizes:
                    fps, cpu_fps = budget_rates(fitter, frames, batch, args.budget, args.repeats)
                    base = base or (fps, cpu_fps)
                    rates[(threads, size, batch)] = fps
                    print(f"  batch {batch:4d}: {fps:8.2f} frames/s ({fps * args.budget:8.1f} frame-iterations/s), "
                          f"x{fps / base[0]:.2f} batch {args.batch_sizes[0]}; {cpu_fps:6.2f} frames per CPU "
                          f"second, x{cpu_fps / base[1]:.2f}", flush=True)
                if device.type == "cuda":
                    profile_copies(fitter, frames, max(args.batch_sizes))
            if "converged" in parts:
                fitter = Fitter(model, "soft", FitConfig(working_size=size), device=device)
                print(f"converged: {len(frames)} frames at {size} px, default config, {threads} threads")
                base = None
                for batch in args.converged_batch_sizes:
                    fps, iou, err, its = converged(fitter, frames, batch)
                    base = base or fps
                    print(f"  batch {batch:4d}: {fps:7.3f} frames/s, x{fps / base:.2f}; mean IoU {iou:.3f}, keypoint "
                          f"error {err:.2f} mm, {its:.0f} iterations/frame (search included)", flush=True)
    if len(args.threads) > 1 and "budget" in parts:
        # the goal's ratio: the largest batch at each thread count against the best batch-1 figure
        # (at batch 1 more threads mostly do not help, on a loaded machine they hurt)
        small, large = args.batch_sizes[0], args.batch_sizes[-1]
        for size in args.sizes:
            best = max(rates[(t, size, small)] for t in args.threads)
            print(f"budget at {size} px, batch {large} / the best batch {small} ({best:.2f} frames/s): "
                  + ", ".join(f"{t} threads x{rates[(t, size, large)] / best:.2f}" for t in args.threads))
    if "breakdown" in parts and device.type == "cpu":
        for size in args.sizes:
            fitter = Fitter(model, "soft", FitConfig(working_size=size, patience=10 ** 9), device=device)
            print(f"breakdown: CPU ms of this thread per frame (and iteration) at {size} px, "
                  f"{torch.get_num_threads()} threads (forward + backward each)")
            rows = {b: breakdown(fitter, frames, b, args.repeats) for b in args.batch_sizes}
            first = rows[args.batch_sizes[0]]["loop"]
            for b, row in rows.items():
                rest = row["loop"] - row["model"] - row["render"] - row["points"]
                print(f"  batch {b:4d}: loop {row['loop']:6.2f} = model {row['model']:5.2f} + render {row['render']:5.2f}"
                      f" + points {row['points']:5.2f} + rest {rest:5.2f}; loop x{first / row['loop']:.2f} "
                      f"batch {args.batch_sizes[0]}", flush=True)
    if "processes" in parts and device.type == "cpu":
        print(f"processes: fit-dataset over {len(frames)} frames (batch {args.process_batch}"
              f"{', --fast' if args.process_fast else ''})")
        processes(frames, args)


if __name__ == "__main__":
    main()
