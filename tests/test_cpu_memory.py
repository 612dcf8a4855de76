"""fitting.cpu_memory: freed CPU memory is reused, not faulted in again (issue 14)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The soft rasterizer's forward and backward pass on 8 hands at 96 px (the face-pixel pairs,
# about 35,000 a hand, and their rows of 1-20 MB), a little moved each round so that the
# pairs' number changes as it does in a fit: prints the minor page faults per round after a
# warm-up, thousands when the temporaries land on new pages (glibc's defaults), about none
# when the freed blocks are reused.
_PROBE = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from hands import load_hand
from renderers import Camera, make_renderer
model = load_hand("default")
if sys.argv[1] == "fitter":
    from fitting import Fitter
    Fitter(model, "soft", device="cpu")
from fitting.cpu_memory import keep_freed_memory
print(keep_freed_memory())
renderer, camera = make_renderer("soft"), Camera(120.0, 120.0, 47.5, 47.5, 96, 96)
g = torch.Generator().manual_seed(0)
base = model(**model.neutral_parameters(8)).vertices.detach() + torch.tensor([0.0, 0.0, 400.0])
def render(r):
    verts = (base * (1.0 + 0.01 * r) + torch.randn(8, 1, 3, generator=g)).requires_grad_(True)
    out = renderer(verts, model.faces, camera, sigma_px=0.25)
    (out.silhouette.sum() + out.depth.sum()).backward()
for r in range(3):
    render(r)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for r in range(5):
    render(r)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _probe(mode: str, malloc: str | None) -> tuple[bool, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HANDFIT_CPU_MALLOC", None)
    if malloc is not None:
        env["HANDFIT_CPU_MALLOC"] = malloc
    out = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT)), mode], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return out[-2] == "True", float(out[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_cpu_fitter_keeps_freed_memory_and_the_default_faults_pages_in_again():
    kept, kept_faults = _probe("fitter", None)  # the Fitter turns it on
    default, default_faults = _probe("plain", "default")
    assert kept and not default
    assert default_faults > 1000  # each round's temporaries on new pages
    # measured: 0-530 against 5,000-8,300 faults a round
    assert kept_faults < default_faults / 5, (kept_faults, default_faults)


def test_keep_freed_memory_is_idempotent():
    from fitting.cpu_memory import keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() is first
