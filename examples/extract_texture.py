"""Fit a short synthetic recording from depth, extract the hand's texture from 3 RGB views, write a GLB.

    python examples/extract_texture.py                 # 3 frames, default fits (a few minutes on a CPU)
    python examples/extract_texture.py --fast          # rough fits, under a minute
    python examples/extract_texture.py --frames 5 --size 1024 --out out/texture

The recording: the default hand moves a little over the frames in front of a depth camera (the
SR305's intrinsics at half resolution) and of three RGB cameras on an arc around it (-50, 0 and
+50 degrees about the vertical; the middle one is the depth camera), the hand wearing a known
coloured pattern (:func:`fitting.synthetic.uv_pattern`, rendered through PyTorch3D's
``TexturesUV``). Each frame is fitted from its depth alone (:meth:`fitting.Fitter.track`); the
fitted meshes, moved into the three RGB cameras, unwrap the views into the texture
(:func:`fitting.texture.extract_texture`). Written to ``--out``: ``texture.png``,
``confidence.png``, ``hand.obj`` (+ ``hand.mtl``, ``hand_texture.png``), ``hand.glb`` and
``picture.png``: the input view | the fitted hand rendered with the extracted texture | the
texture | its confidence.
"""

import argparse
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from fitting import Fitter, Observation
from fitting.config import preview_config
from fitting.synthetic import (orbit_views, random_hand_parameters, render_depth_frame, render_textured,
                               smooth_trajectory, uv_pattern)
from fitting.texture import TextureFrame, extract_texture
from fitting.uv_atlas import uv_atlas
from hands import load_hand
from renderers import Camera, HybridRenderer

#: The depth camera (the SR305's intrinsics at half resolution) is also the middle RGB camera.
CAMERA = dict(fx=238.0, fy=238.0, cx=159.5, cy=119.5, width=320, height=240)
ANGLES = (-50.0, 0.0, 50.0)
#: The point the RGB cameras turn about, mm in the depth camera's coordinates.
CENTRE = (0.0, 0.0, 450.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3, help="frames in the recording")
    parser.add_argument("--size", type=int, default=512, help="texels per side")
    parser.add_argument("--out", default="out/extract_texture", help="output folder")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (the fits)")
    parser.add_argument("--fast", action="store_true", help="a tenth of the iterations on a 48 px crop")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    model = load_hand("default")
    atlas = uv_atlas(model)
    camera = Camera(**CAMERA)
    centre = torch.tensor(CENTRE)
    truth_texture = uv_pattern(args.size)
    g = torch.Generator().manual_seed(args.seed)

    # the recording: depth from the middle camera, RGB from all three
    start = random_hand_parameters(model, g)
    end = {k: v.clone() for k, v in start.items()}
    end["transl"] = start["transl"] + torch.tensor([[15.0, -10.0, 10.0]])
    end["global_orient"] = start["global_orient"] + torch.tensor([[0.0, 0.15, 0.1]])
    observations, rgbs = [], []
    for i, p in enumerate(smooth_trajectory(start, end, args.frames)):
        depth, _ = render_depth_frame(model, HybridRenderer(), p, camera, g)
        observations.append(Observation(depth=depth, camera=camera, name=f"{i:03d}"))
        with torch.no_grad():
            views = orbit_views(model(**p).vertices, ANGLES, centre=centre)
        rgbs.append(render_textured(views, atlas.faces, atlas.uv, atlas.face_uvs, truth_texture, camera))

    # fit every frame from its depth alone, then unwrap the RGB views with the fitted meshes
    fitter = Fitter(model, "soft", preview_config() if args.fast else None, device=args.device)
    frames = []
    for result, rgb in zip(fitter.track(observations, shape_frames=min(2, args.frames)), rgbs):
        print(f"frame {result.name}: IoU {result.metrics['iou']:.3f}, median depth residual "
              f"{result.metrics['depth_median_mm']:.1f} mm", flush=True)
        fitted = orbit_views(result.vertices.float(), ANGLES, centre=centre)
        frames.append(TextureFrame(result.name, rgb, camera, fitted))
    out = Path(args.out)
    mid = ANGLES.index(0.0)  # the depth camera: the GLB holds the first fit in its coordinates
    report = extract_texture(frames, out, atlas, size=args.size, mesh_vertices=frames[0].vertices[mid])

    texture = torch.from_numpy(iio.imread(out / "texture.png")).permute(2, 0, 1).float() / 255
    seen = torch.from_numpy(iio.imread(out / "confidence.png")) > 0
    mse = ((texture - truth_texture)[:, seen] ** 2).mean()
    print(f"{100 * report.seen_fraction:.1f} % of the texels seen; PSNR over them against the true texture "
          f"{10 * torch.log10(1 / mse):.1f} dB")

    # the picture: input view | fitted hand with the extracted texture | texture | confidence
    last = frames[-1]
    render = render_textured(last.vertices[mid:mid + 1], atlas.faces, atlas.uv, atlas.face_uvs, texture, camera)[0]
    H = camera.height
    hand = (last.rgb[mid].sum(0) > 0) | (render.sum(0) > 0)   # crop the views to the hand, 12 px around
    rows, cols = torch.nonzero(hand, as_tuple=True)
    side = int(max(rows.max() - rows.min(), cols.max() - cols.min())) + 24
    r0 = int(min(max((rows.min() + rows.max()) // 2 - side // 2, 0), H - side))
    c0 = int(min(max((cols.min() + cols.max()) // 2 - side // 2, 0), camera.width - side))
    crop = (slice(None), slice(r0, r0 + side), slice(c0, c0 + side))

    def tile(img):  # (3, h, w) -> (H, H * w / h, 3) uint8
        img = torch.nn.functional.interpolate(img[None], size=(H, H * img.shape[2] // img.shape[1]),
                                              mode="bilinear", align_corners=False)[0]
        return (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    confidence = torch.from_numpy(iio.imread(out / "confidence.png")).float()[None].expand(3, -1, -1) / 255
    picture = np.concatenate([tile(last.rgb[mid][crop]), tile(render[crop]), tile(texture), tile(confidence)], axis=1)
    iio.imwrite(out / "picture.png", picture)
    print(f"wrote {out}/hand.glb, hand.obj, texture.png, confidence.png and picture.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
