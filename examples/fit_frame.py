"""Fit the hand to one depth frame and write the fit: an SR305 frame, or the built-in synthetic one.

    python examples/fit_frame.py                                  # a synthetic frame with known truth
    python examples/fit_frame.py ../shared/data/sr305/20210326-231615/60.png --out out/frame60
    python examples/fit_frame.py --fast                           # a rough fit in a few seconds

SR305 frames use that camera's intrinsics and its depth unit (0.125 mm); another camera's frames
need theirs (see ``handfit fit --help``).
"""

import argparse
import sys

import torch

from fitting import Fitter, Observation, read_depth
from fitting.config import preview_config
from fitting.synthetic import SR305_CAMERA, random_hand_parameters, render_depth_frame
from hands import load_hand
from renderers import Camera, make_renderer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frame", nargs="?", help="a 16-bit SR305 depth PNG (default: a synthetic frame)")
    parser.add_argument("--out", default="out/fit_frame", help="output folder")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--fast", action="store_true", help="a tenth of the iterations on a 48 px crop")
    args = parser.parse_args(argv)

    camera = Camera(**SR305_CAMERA)
    model = load_hand("default")
    truth = None
    if args.frame:
        depth = read_depth(args.frame, depth_scale=0.125)
    else:  # render a frame of a random hand, so that the fit can be checked against the truth
        g = torch.Generator().manual_seed(0)
        params = random_hand_parameters(model, g)
        depth, _ = render_depth_frame(model, make_renderer("soft"), params, camera, g)
        with torch.no_grad():
            truth = model(**params).keypoints[0]

    fitter = Fitter(model, "soft", preview_config() if args.fast else None, device=args.device)
    result = fitter.fit(Observation(depth=depth, camera=camera, name="frame"))
    result.save(args.out)
    m = result.metrics
    print(f"IoU {m['iou']:.3f}, median depth residual {m['depth_median_mm']:.1f} mm, {m['seconds']:.1f} s "
          f"on {fitter.device}; wrote {args.out}/")
    if truth is not None:
        print(f"mean keypoint error against the truth: {(result.keypoints - truth).norm(dim=-1).mean():.1f} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
