"""Nearest-vertex search of the data-to-model term on the CPU: ours against PyTorch3D's kernel.

    OMP_NUM_THREADS=1 .venv/bin/python bench/nearest_vertex.py   # 1500 points, 1609 vertices, B = 1 and 16

Five searches, interleaved run by run in one process: :func:`losses.nearest_vertex` (blocks of
``[p, 1] @ [-2 v; ||v||^2]`` distances, one K = 4 product into a reused buffer, a two-level minimum
over vertex groups whose member is picked once per frame), the same with ``addmm(||v||^2, p, v^T,
alpha=-2)`` blocks (the search before the K = 4 product: x1.17 at batch 1, x1.02 at batch 16, same
indices, load 3), the same two levels with the member picked in each block, the same
blocks with one indexed ``min`` over all vertices (the search before the two-level minimum), and
``pytorch3d.ops.knn_points``. Prints the median CPU time of this thread (``time.thread_time``,
so that a loaded machine changes it little) of 9 runs each and their agreement.
"""

import statistics
import sys
import time
from pathlib import Path

import torch
from pytorch3d.ops import knn_points

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import losses.points  # noqa: E402
from losses import nearest_vertex  # noqa: E402


def bias_blocks(points: torch.Tensor, verts: torch.Tensor) -> torch.Tensor:
    """The two-level minimum over ``addmm(||v||^2, p, v^T, alpha=-2)`` blocks (the search before
    the squared norms joined the product as a fourth column)."""
    G = losses.points._CPU_GROUPS
    centre = verts.mean(1, keepdim=True)
    p, v = points - centre, verts - centre
    B, N, V = points.shape[0], points.shape[1], verts.shape[1]
    S = max(1, -(-V // G))
    v2 = torch.nn.functional.pad((v * v).sum(-1), (0, S * G - V), value=float("inf"))
    vt = torch.nn.functional.pad(v, (0, 0, 0, S * G - V)).transpose(1, 2)
    step = max(1, losses.points._CPU_BLOCK // (S * G))
    members = torch.nn.functional.pad(verts, (0, 0, 0, S * G - V), value=float("inf")).view(
        B, S, G, 3).permute(0, 3, 2, 1).contiguous()
    q = points.transpose(1, 2)[..., None]
    group_min = torch.empty(N, G, dtype=p.dtype)
    idx = torch.empty(B, N, dtype=torch.long)
    for b in range(B):
        for start in range(0, N, step):
            block = torch.addmm(v2[b, None], p[b, start:start + step], vt[b], alpha=-2.0)
            group_min[start:start + step] = block.view(block.shape[0], S, G).amin(1)
        group = group_min.argmin(-1)
        diff = q[b] - members[b].index_select(1, group)
        idx[b] = (diff * diff).sum(0).argmin(-1) * G + group
    return idx


def one_level(points: torch.Tensor, verts: torch.Tensor) -> torch.Tensor:
    """The same ``addmm`` blocks, each reduced by one indexed ``min`` over the V vertices."""
    centre = verts.mean(1, keepdim=True)
    p, v = points - centre, verts - centre
    v2 = (v * v).sum(-1)
    step = max(1, losses.points._CPU_BLOCK // verts.shape[1])
    idx = torch.empty(points.shape[:2], dtype=torch.long)
    for b in range(points.shape[0]):
        for start in range(0, points.shape[1], step):
            block = torch.addmm(v2[b, None], p[b, start:start + step], v[b].T, alpha=-2.0)
            idx[b, start:start + step] = block.min(-1).indices
    return idx


def per_block_member(points: torch.Tensor, verts: torch.Tensor) -> torch.Tensor:
    """The two-level minimum with the winning group's member found in each ``addmm`` block."""
    G = losses.points._CPU_GROUPS
    centre = verts.mean(1, keepdim=True)
    p, v = points - centre, verts - centre
    B, N, V = points.shape[0], points.shape[1], verts.shape[1]
    S = max(1, -(-V // G))
    v2 = torch.nn.functional.pad((v * v).sum(-1), (0, S * G - V), value=float("inf"))
    v = torch.nn.functional.pad(v, (0, 0, 0, S * G - V))
    step = max(1, losses.points._CPU_BLOCK // (S * G))
    idx = torch.empty(B, N, dtype=torch.long)
    for b in range(B):
        for start in range(0, N, step):
            block = torch.addmm(v2[b, None], p[b, start:start + step], v[b].T, alpha=-2.0)
            n = block.shape[0]
            members = block.view(n, S, G)
            group = members.amin(1).min(-1).indices
            member = members.gather(2, group.view(n, 1, 1).expand(n, S, 1))[..., 0].min(-1).indices
            idx[b, start:start + step] = member * G + group
    return idx


def main() -> None:
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for B, N, V in ((1, 1500, 1609), (16, 1500, 1609)):
        verts = torch.randn(B, V, 3, generator=g) * 40 + torch.tensor([0.0, 0.0, 450.0])
        points = verts[:, torch.randint(0, V, (N,), generator=g)] + torch.randn(B, N, 3, generator=g) * 3
        arms = {"ours": lambda: nearest_vertex(points, verts),
                "bias blocks": lambda: bias_blocks(points, verts),
                "per-block member": lambda: per_block_member(points, verts),
                "one-level min": lambda: one_level(points, verts),
                "knn_points": lambda: knn_points(points, verts, K=1, return_nn=False).idx[..., 0]}
        times = {k: [] for k in arms}
        for _ in range(10):  # the first round is a warm-up
            for name, fn in arms.items():
                t0 = time.thread_time()
                fn()
                times[name].append(time.thread_time() - t0)
        ms = {k: statistics.median(v[1:]) * 1e3 for k, v in times.items()}
        ours = nearest_vertex(points, verts)
        same = {k: (fn() == ours).float().mean().item() * 100 for k, fn in arms.items() if k != "ours"}
        print(f"B={B:2d} N={N} V={V}: ours {ms['ours']:6.1f} ms, bias blocks {ms['bias blocks']:6.1f} ms "
              f"(x{ms['bias blocks'] / ms['ours']:.2f}, same index {same['bias blocks']:.2f} %), per-block member {ms['per-block member']:6.1f} ms "
              f"(x{ms['per-block member'] / ms['ours']:.2f}), one-level min {ms['one-level min']:6.1f} ms "
              f"(x{ms['one-level min'] / ms['ours']:.2f}), pytorch3d.ops.knn_points {ms['knn_points']:6.1f} ms "
              f"(x{ms['knn_points'] / ms['ours']:.2f}); same index as per-block member "
              f"{same['per-block member']:.2f} %, as one-level {same['one-level min']:.2f} %, "
              f"as knn_points {same['knn_points']:.2f} %")

if __name__ == "__main__":
    main()
