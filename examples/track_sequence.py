"""Track a hand through a folder of depth frames, in memory, and write one fit per frame.

    python examples/track_sequence.py                     # the SR305 open-palm sequence in ../shared
    python examples/track_sequence.py FOLDER --limit 5 --fast

The frames are fitted in natural order with :meth:`fitting.Fitter.track`: the shape of the first
frames is frozen, each later frame starts from the previous fits. For long recordings that must
survive a stop, use ``handfit fit-sequence`` (resumable) instead.
"""

import argparse
import sys
import time
from pathlib import Path

from fitting import Fitter, Observation, read_depth
from fitting.config import preview_config
from fitting.sequence import list_frames
from fitting.synthetic import SR305_CAMERA
from hands import load_hand
from renderers import Camera

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sr305" / "20210326-230536"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER), help="16-bit SR305 depth PNGs")
    parser.add_argument("--limit", type=int, default=0, help="only the first N frames")
    parser.add_argument("--shape-frames", type=int, default=3, help="frames whose mean shape is frozen")
    parser.add_argument("--out", default="out/track_sequence", help="output folder (one subfolder per frame)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--fast", action="store_true", help="a tenth of the iterations on a 48 px crop")
    args = parser.parse_args(argv)

    camera = Camera(**SR305_CAMERA)
    paths = list_frames(args.folder)[: args.limit or None]
    frames = (Observation(depth=read_depth(p, depth_scale=0.125), camera=camera, name=p.stem) for p in paths)
    fitter = Fitter(load_hand("default"), "soft", preview_config() if args.fast else None, device=args.device)
    t0 = time.perf_counter()
    for n, result in enumerate(fitter.track(frames, shape_frames=min(args.shape_frames, len(paths))), 1):
        result.save(Path(args.out) / result.name)
        print(f"{result.name}: IoU {result.metrics['iou']:.3f}  median depth residual "
              f"{result.metrics['depth_median_mm']:.1f} mm", flush=True)
    print(f"{n} frames in {time.perf_counter() - t0:.1f} s on {fitter.device}; wrote {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
