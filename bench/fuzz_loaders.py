"""Fuzz the model loaders: outcome counts per loader over many mutated files.

Usage: ``python bench/fuzz_loaders.py [--cases 3000] [--seed 0] [--loaders mano_pkl,mano_npz,gltf,glb]
[--timeout 10] [--show 10]`` (needs the rigged hands of ``../shared/models``).

The same fuzzer as ``tests/test_hostile_models.py`` (``tests/hostile_fuzz.py``): mutants of a
valid synthetic MANO pickle, a MANO ``.npz``, the Godot hand as ``.gltf`` + ``.bin`` and the
WebXR ``.glb``, each loaded in a forked child under an address-space cap and a timeout.
Outcomes: ``clean`` (loaded), ``one-line ValueError`` (the loader refused it the promised
way) and ``other`` (another exception, a multi-line message, a crash by signal, a timeout);
every ``other`` case is listed with its mutation. The most frequent refusal messages are
shown with numbers and paths blanked. Exit status 1 if any ``other`` case was found.
"""

from __future__ import annotations

import argparse
import ast
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import hostile_fuzz as hf  # noqa: E402

import hands.gltf_hand  # noqa: E402,F401 - imported before forking, so a case costs milliseconds
import hands.mano  # noqa: E402,F401


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3000, help="mutants per loader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loaders", default=",".join(hf.LOADERS))
    parser.add_argument("--timeout", type=float, default=hf.TIMEOUT_S, help="seconds per case")
    parser.add_argument("--show", type=int, default=10, help="most frequent refusal messages to show per loader")
    parser.add_argument("--models", type=Path, default=ROOT.parent / "shared" / "models")
    args = parser.parse_args(argv)
    seeds = hf.Seeds(args.models)
    messages: dict[str, collections.Counter] = {}

    def progress(loader, i, outcome, detail=""):
        if (i + 1) % 500 == 0:
            print(f"  {loader}: {i + 1} cases", file=sys.stderr, flush=True)

    rows = []
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        for loader in args.loaders.split(","):
            t0 = time.perf_counter()
            counts = hf.fuzz(loader, args.cases, seeds, Path(tmp), seed=args.seed, timeout=args.timeout,
                             progress=progress, record=messages.setdefault(loader, collections.Counter()))
            seconds = time.perf_counter() - t0
            rows.append((loader, counts["clean"], counts["error"], len(counts["bad"]), seconds))
            for case, what, detail in counts["bad"]:
                status = 1
                print(f"OTHER {loader} case {case}: {what} -> {detail}")
    print(f"\n{'loader':10s} {'cases':>6s} {'clean':>6s} {'one-line ValueError':>20s} {'other':>6s} {'ms/case':>8s}")
    for loader, clean, error, bad, seconds in rows:
        total = clean + error + bad
        print(f"{loader:10s} {total:6d} {clean:6d} {error:20d} {bad:6d} {1000 * seconds / max(total, 1):8.1f}")
    for loader, counter in messages.items():
        if args.show and counter:
            print(f"\n{loader}: most frequent refusals")
            for msg, n in counter.most_common(args.show):
                print(f"  {n:5d}  {msg}")
    return status


def blank(message: str) -> str:
    """A refusal message with paths, quoted values and numbers blanked, to group them."""
    kind, _, text = message.partition(": ")
    try:
        text = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    message = re.sub(r"(mano_path|model_path) \S+:", r"\1 <file>:", f"{kind}: {text}")
    message = re.sub(r"'[^'\s]{0,40}'", "'…'", message)
    return re.sub(r"-?\d+(\.\d+)?", "#", message)[:140]


hf.blank_message = blank

if __name__ == "__main__":
    sys.exit(main())
