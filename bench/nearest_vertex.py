"""Nearest-vertex search of the data-to-model term on the CPU: ours against PyTorch3D's kernel.

    .venv/bin/python bench/nearest_vertex.py            # 1500 points, 1609 vertices, B = 1 and 16

Prints the median time of each (7 runs, same process) and their agreement.
"""

import statistics
import sys
import time
from pathlib import Path

import torch
from pytorch3d.ops import knn_points

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from losses import nearest_vertex  # noqa: E402


def median_ms(fn, runs: int = 7) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for B, N, V in ((1, 1500, 1609), (16, 1500, 1609)):
        verts = torch.randn(B, V, 3, generator=g) * 40 + torch.tensor([0.0, 0.0, 450.0])
        points = verts[:, torch.randint(0, V, (N,), generator=g)] + torch.randn(B, N, 3, generator=g) * 3
        ours = median_ms(lambda: nearest_vertex(points, verts))
        theirs = median_ms(lambda: knn_points(points, verts, K=1, return_nn=False))
        same = (nearest_vertex(points, verts) == knn_points(points, verts, K=1, return_nn=False).idx[..., 0])
        print(f"B={B:2d} N={N} V={V}: ours {ours:6.1f} ms, pytorch3d.ops.knn_points {theirs:6.1f} ms "
              f"(x{theirs / ours:.2f}); same index for {same.float().mean() * 100:.2f} % of the points")


if __name__ == "__main__":
    main()
