"""Adapt the depth initializer to your camera from unlabeled frames, then fit with it.

    python examples/adapt_to_my_camera.py                       # SR305 frames of ../shared (a few minutes)
    python examples/adapt_to_my_camera.py --frames MY_FRAMES --camera my_camera.json --depth-scale 1.0
    python examples/adapt_to_my_camera.py --tiny                # a smoke run of every step in under a minute

The four steps of ``handfit synth``, ``train-init``, ``adapt`` and ``fit --init network``, from
Python: (1) generate a small labelled synthetic set with your camera's intrinsics, (2) train
the initializer network on it briefly (or start from the shipped checkpoint, ``--shipped``),
(3) adapt it on your folder of depth frames by render-and-compare (no labels: only the depth
images are read; the labelled synthetic batches are mixed in against drift), (4) fit a frame
with the adapted network as the first guess instead of the orientation search. A real run
wants thousands of synthetic samples, tens of epochs and all your frames (README
"Initializer network" and "Adapting to a camera"); the defaults here only show the steps.
"""

import argparse
import json
from pathlib import Path

from fitting import Fitter, Observation, read_depth
from fitting.adaptation import AdaptOptions, FrameCrops, adapt, prediction_metrics
from fitting.config import FitConfig, preview_config
from fitting.initializer import DEFAULT_CHECKPOINT, TrainOptions, load_initializer, train
from fitting.io import camera_from_args
from fitting.synth_dataset import SynthOptions, generate
from fitting.synthetic import SR305_CAMERA
from hands import load_hand
from renderers import Camera

SR305 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sr305" / "20210326-231615"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default=str(SR305), help="folder of your depth frames (default: an SR305 sequence)")
    parser.add_argument("--camera", help="their camera JSON (fx, fy, cx, cy, width, height); default: SR305's")
    parser.add_argument("--depth-scale", type=float, default=0.125, help="mm per depth unit (SR305: 0.125)")
    parser.add_argument("--work", default="out/adapt_example", help="working folder")
    parser.add_argument("--samples", type=int, default=200, help="synthetic samples to generate")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument("--adapt-epochs", type=int, default=2, help="adaptation epochs")
    parser.add_argument("--shipped", action="store_true", help="adapt the shipped checkpoint instead of training one")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny settings (small frames and crops, one epoch each)")
    args = parser.parse_args(argv)

    work = Path(args.work)
    model = load_hand("default")
    camera = camera_from_args(camera_json=args.camera) if args.camera else Camera(**SR305_CAMERA)
    size, working = (32, 32) if args.tiny else (96, 96)
    if args.tiny:
        args.samples, args.epochs, args.adapt_epochs = 8, 1, 1

    # 1. a labelled synthetic set with this camera's focal length
    synth = SynthOptions(samples=args.samples, chunk_size=args.samples, seed=1, width=camera.width,
                         height=camera.height, fx=float(camera.fx[0]), fy=float(camera.fy[0]), progress=not args.tiny)
    generate(model, work / "synth", synth)
    print(f"1. {args.samples} synthetic samples in {work / 'synth'}")

    # 2. the initializer network, trained briefly (or the shipped one)
    if args.shipped and not args.tiny:
        start = DEFAULT_CHECKPOINT
        print(f"2. starting from the shipped checkpoint {start}")
    else:
        history = train(work / "synth", work / "init", model,
                        TrainOptions(epochs=args.epochs, batch_size=8 if args.tiny else 32, size=size, seed=0,
                                     device=args.device, val_fraction=0.25 if args.tiny else 0.1))
        start = work / "init" / "best.pt"
        print(f"2. trained {len(history)} epochs: validation MPJPE {history[-1]['val_mpjpe_mm']:.1f} mm")

    # 3. unsupervised adaptation on the frames (only their depth is read)
    frames = Path(args.frames)
    if args.tiny:  # three frames of the folder
        frames = work / "frames"
        frames.mkdir(parents=True, exist_ok=True)
        for p in sorted(Path(args.frames).glob("*.png"))[:3]:
            (frames / p.name).write_bytes(p.read_bytes())
    options = AdaptOptions(epochs=args.adapt_epochs, batch_size=4, lr=1e-4, working_size=working,
                           depth_scale=args.depth_scale, device=args.device)
    history = adapt(frames, start, work / "adapted", model, options, camera=camera, synthetic=work / "synth")
    print(f"3. adapted {len(history)} epochs on {history[-1]['frames']} frames: energy "
          f"{history[0]['energy']:.4f} -> {history[-1]['energy']:.4f}")
    data = FrameCrops(frames, camera, working_size=working, depth_scale=args.depth_scale)
    crops = [c for c in (data[i] for i in range(len(data))) if c is not None]
    for name, ckpt in (("before", start), ("after", work / "adapted" / "last.pt")):
        fitter = Fitter(load_hand("default"), "soft", FitConfig(working_size=working), device="cpu")
        m = prediction_metrics(load_initializer(ckpt, fitter.model), fitter, crops)
        print(f"   the network's direct prediction {name} adapting: mean IoU {float(m['iou'].mean()):.3f}, "
              f"depth residual {float(m['depth_median_mm'].nanmean()):.1f} mm (median)")

    # 4. fit a frame from the adapted network
    cfg = preview_config(working_size=48) if args.tiny else FitConfig()
    fitter = Fitter(model, "soft", cfg, device=args.device, init="network", checkpoint=work / "adapted" / "last.pt")
    frame = sorted(frames.glob("*.png"))[0]
    result = fitter.fit(Observation(depth=read_depth(frame, depth_scale=args.depth_scale), camera=camera,
                                    name=frame.stem))
    m = result.metrics
    print(f"4. fitted {frame.name} from the adapted network: IoU {m['iou']:.3f}, depth residual "
          f"{m['depth_median_mm']:.1f} mm (median), {m['search_iterations']} check + {m['iterations']} stage "
          f"iterations, {m['seconds']:.1f} s")
    result.save(work / "fit")
    (work / "summary.json").write_text(json.dumps({"iou": m["iou"], "iterations": m["iterations"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
