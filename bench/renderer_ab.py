"""Fitting speed of this tree's renderers and nearest-vertex search against an earlier commit's.

The ``renderers`` and ``losses`` packages of ``--base`` (a git revision) are extracted with
``git archive`` into a temporary folder as ``renderers_base`` and ``losses_base``; the same
fitter then runs the budget loop of ``bench/throughput.py`` (a fixed articulation stage) with
the earlier and with the present renderer and search, interleaved round by round in one
process, so that the load of a shared machine hits both alike. Prints the median frames per
second of each per batch size (per wall second and per CPU second of the process, which a
loaded machine changes less), their ratio, and this tree's ratio of the largest to the
smallest batch size.

    .venv/bin/python bench/renderer_ab.py --base a610675 --batch-sizes 1,16 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def extract_base(revision: str, folder: Path) -> None:
    """``renderers/`` and ``losses/`` of ``revision`` as ``renderers_base/`` and ``losses_base/``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "renderers", "losses"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            top, _, rest = member.name.partition("/")
            if member.isfile() and rest.endswith(".py") and "/" not in rest:
                target = folder / f"{top}_base" / rest
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare with")
    parser.add_argument("--renderer", default="soft")
    parser.add_argument("--size", type=int, default=96, help="working size (px)")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",") if b]

    import torch

    from fitting import Fitter, FitConfig
    from hands import load_hand
    import losses.points
    import renderers
    from throughput import budget_rates, make_frames

    with tempfile.TemporaryDirectory() as tmp:
        extract_base(args.base, Path(tmp))
        sys.path.insert(0, tmp)
        import losses_base.points
        import renderers_base
        import renderers_base.base

        # the earlier renderers check their inputs against their own Camera class: give them ours
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("renderers_base") and hasattr(module, "Camera"):
                module.Camera = renderers.Camera

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; base {args.base}, "
              f"renderer {args.renderer}, {args.size} px, {args.budget} iterations")
        frames = make_frames(4)
        fitter = Fitter(load_hand("default"), args.renderer, FitConfig(working_size=args.size, patience=10 ** 9))
        arms = {"base": (renderers_base.make_renderer(args.renderer), losses_base.points.nearest_vertex),
                "this tree": (fitter.renderer, losses.points.nearest_vertex)}
        fps = {}
        for _ in range(args.rounds):
            for label, (renderer, search) in arms.items():
                fitter.renderer, losses.points.nearest_vertex = renderer, search
                for b in batches:
                    fps.setdefault((label, b), []).append(budget_rates(fitter, frames, b, args.budget, 2))
        losses.points.nearest_vertex = arms["this tree"][1]
    for b in batches:
        (base, base_cpu), (new, new_cpu) = ([statistics.median(r[i] for r in fps[(arm, b)]) for i in (0, 1)]
                                            for arm in ("base", "this tree"))
        print(f"batch {b:3d}: base {base:.3f} frames/s, this tree {new:.3f} frames/s, x{new / base:.2f}; per CPU "
              f"second base {base_cpu:.3f}, this tree {new_cpu:.3f}, x{new_cpu / base_cpu:.2f}", flush=True)
    ratios = [statistics.median(r[i] for r in fps[("this tree", batches[-1])]) /
              statistics.median(r[i] for r in fps[("this tree", batches[0])]) for i in (0, 1)]
    print(f"this tree, batch {batches[-1]} / batch {batches[0]}: x{ratios[0]:.2f} (wall), x{ratios[1]:.2f} (CPU)")


if __name__ == "__main__":
    main()
