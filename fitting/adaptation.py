"""Unsupervised adaptation of a depth initializer to a camera: render-and-compare on unlabeled frames.

Dibra et al., "How to refine 3D hand pose estimation from unlabelled depth data", 3DV 2017
(its supplementary is seed 001): a network trained on labelled synthetic depth is refined on
unlabelled depth of the target camera by rendering its prediction and comparing it with the
frame, with a collision term and joint-angle bounds keeping the poses plausible (they adapted
on 50,000 unlabelled SR300 frames). :func:`adapt` (``handfit adapt``) does this for a
:class:`fitting.initializer.DepthInitializer`:

- every frame is segmented and cropped exactly as the fitter's network start does it
  (:func:`fitting.preprocess.prepare` at the fit's box and working size, then
  :func:`fitting.initialize.network_input`); a frame without a findable hand is skipped;
- the network's prediction goes through its :class:`hands.HandModel` output layer and the
  fitter's own energy (:meth:`fitting.Fitter.energy_terms` without the offset regularisers:
  silhouette and depth against the crop with the chosen renderer (``"soft"``, or ``"splat"``,
  seed 001's Eqs. 9-13), the data-to-model points, the joint-limit term (seed 001 Table 1; our
  network's sigmoid output keeps the angles within the limits, so it is zero unless a model's
  limits are overridden), the penetration term (on by default here,
  :data:`fitting.config.PLAUSIBILITY_WEIGHTS`; or seed 001's cylinders, ``collision``), the
  priors; not the fitter's wrist term, :data:`ADAPT_WEIGHTS`) is minimized over the network's
  weights by Adam. No label is read: only the depth images (and their camera).
- optionally (``synthetic``) each step adds a labelled synthetic batch's DeepHPS Eq. 2 loss
  (:func:`fitting.initializer.initializer_loss`, times ``synthetic_weight``). Render-and-compare
  sees only the visible surface: a self-occluded finger, or the hand's depth order, has no
  gradient, so an adaptation that only follows it drifts wherever the silhouette is
  ambiguous. Dibra et al. start from the synthetic model and let only the unlabelled energy
  act, and so does the default; the labelled loss is the anchor that stops such a drift. On a
  domain-shifted synthetic set (``bench/adaptation.py``, README "Adapting to a camera") both
  lowered the energy and raised the prediction's IoU alike, but the MPJPE fell by 16 % with the
  labelled batches and by 2 % without (8 epochs, with the wrist term); without the wrist term
  (:data:`ADAPT_WEIGHTS`) and mixed, by 19.4 % in 16 epochs and 20.1 % in 32 (87.7 -> 70.1 mm;
  21.2 %, 69.1 mm, with another seed).

Per epoch it logs each weighted energy term's mean, the total, the synthetic loss and the time,
writes ``OUT/last.pt`` (the :mod:`fitting.initializer` checkpoint format, with Adam's state;
``--init network --checkpoint OUT/last.pt`` takes it) and ``OUT/best.pt`` at the lowest mean
energy, and a rerun resumes from ``OUT/last.pt``. Under ``torchrun`` each process adapts on its
``DistributedSampler`` share through ``DistributedDataParallel`` (gloo on the CPU, NCCL on
CUDA), as :func:`fitting.initializer.train` does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import torch
from torch import nn

from hands import HandModel
from renderers import Camera

from .config import DEFAULT_BOX_MM, DEFAULT_RENDERER, DEFAULT_WORKING_SIZE, PLAUSIBILITY_WEIGHTS, FitConfig
from .errors import InputError

__all__ = ["ADAPT_WEIGHTS", "AdaptOptions", "FrameCrops", "adapt", "adaptation_energy", "prediction_metrics", "frames_camera"]

log = logging.getLogger("handfit")

#: Weights in which the adaptation's energy differs from the fitter's (under
#: :attr:`AdaptOptions.weights`): no ``wrist`` term. The fitter pulls its wrist to where the
#: segmentation cut a forearm off (:data:`fitting.config.WRIST_WEIGHT`); a frame without a forearm
#: whose segmentation still cut one (7 of the 160 shifted frames, their cut 235 mm from the true
#: wrist on average) then costs 1e-4 * 235^2 = 5.5, twenty times a well-explained frame's whole
#: energy, and in an adaptation those few frames steer the shared weights: with the term the
#: mixed adaptation of the shifted set reached MPJPE 73.1 mm and made those 7 frames worse
#: (127.9 -> 144.9 mm), without it 70.7 mm (``bench/adaptation.py``, README "Adapting to a camera").
ADAPT_WEIGHTS = {"wrist": 0.0}

#: The energy terms :func:`adapt` logs (those of the fitter's energy that can act without labels).
LOGGED_TERMS = ("silhouette", "depth", "points", "joint_limits", "penetration", "collision", "pose_prior",
                "shape_prior", "bone_scale_prior", "wrist")


@dataclasses.dataclass
class AdaptOptions:
    """Settings of :func:`adapt`.

    Attributes:
        epochs: total epochs over the frames (a resumed run adapts up to this count).
        batch_size: frames per step per process.
        lr: Adam's learning rate (lower than training's 1e-3: the network starts trained; the
            figures of ``bench/adaptation.py`` use 3e-4 and 8 epochs).
        renderer: the renderer of the silhouette and depth terms (:data:`renderers.RENDERERS`:
            ``"soft"``, ``"splat"``, ...).
        working_size: the crops' side (px) the energy is computed at (the fitter's working size;
            the network still sees its own input size).
        weights: energy weights replacing the fitter's (:data:`fitting.config.DEFAULT_WEIGHTS`
            with :data:`fitting.config.PLAUSIBILITY_WEIGHTS` and :data:`ADAPT_WEIGHTS`), e.g.
            ``{"collision": 2e-3}``, or ``{"wrist": fitting.config.WRIST_WEIGHT}`` for the
            fitter's wrist term.
        synthetic_weight: weight of the labelled synthetic batches' Eq. 2 loss (used only when
            :func:`adapt` gets a synthetic dataset).
        synthetic_batch_size: samples per synthetic batch (None: ``batch_size``).
        synthetic_crop: how the synthetic samples are cropped (:data:`fitting.synth_dataset.SYNTH_CROPS`):
            ``"mask"`` (default) by their exact segmentation, as training does; ``"fitter"``
            segments their depth as the unlabelled frames are segmented
            (:func:`fitting.preprocess.prepare`). The network meets the frames through the
            fitter's segmentation, which differs from the exact mask (on the shifted set 12 %
            fewer hand pixels and crop centres 12 mm apart in depth on average; the unadapted
            network's MPJPE is 87.7 mm on its crops against 77.6 mm on the exact masks'), but
            showing the anchor the fitter's crops did not help: the mixed adaptation reached
            76.1 mm with ``"fitter"`` against 73.1 mm with ``"mask"`` (both with the wrist
            term, 16 epochs, ``bench/adaptation.py``).
        depth_scale: millimetres per depth unit of the frames (SR305: 0.125).
        encoding: the frames' encoding (``"uint16"``, ``"nyu"``).
        seed: the shuffling and the synthetic batches.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        max_steps: stop each epoch after this many steps (None: all frames); for smoke tests.

    Raises:
        ValueError: a value out of range.
    """

    epochs: int = 8
    batch_size: int = 8
    lr: float = 3e-4
    renderer: str = DEFAULT_RENDERER
    working_size: int = DEFAULT_WORKING_SIZE
    weights: dict = dataclasses.field(default_factory=dict)
    synthetic_weight: float = 1.0
    synthetic_batch_size: int | None = None
    synthetic_crop: str = "mask"
    depth_scale: float = 1.0
    encoding: str = "uint16"
    seed: int = 0
    device: str = "auto"
    max_steps: int | None = None

    def __post_init__(self):
        from renderers import RENDERERS

        from .initializer import check_schedule

        check_schedule(self.epochs, self.batch_size, self.lr)
        if self.renderer not in RENDERERS:
            raise ValueError(f"renderer must be one of {sorted(RENDERERS)}, got {self.renderer!r}")
        if isinstance(self.working_size, bool) or not isinstance(self.working_size, int) or self.working_size < 16:
            raise ValueError(f"the working size must be an int >= 16 px, got {self.working_size!r}")
        if not (self.synthetic_weight >= 0 and math.isfinite(self.synthetic_weight)):
            raise ValueError(f"the synthetic weight must be >= 0, got {self.synthetic_weight}")
        if self.synthetic_batch_size is not None and self.synthetic_batch_size < 1:
            raise ValueError(f"the synthetic batch size must be >= 1, got {self.synthetic_batch_size}")
        from .synth_dataset import SYNTH_CROPS

        if self.synthetic_crop not in SYNTH_CROPS:
            raise ValueError(f"synthetic_crop must be one of {SYNTH_CROPS}, got {self.synthetic_crop!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    def fit_config(self, box_mm: float = DEFAULT_BOX_MM) -> FitConfig:
        """The :class:`fitting.FitConfig` whose energy weights and crop the adaptation uses."""
        weights = {**PLAUSIBILITY_WEIGHTS, **ADAPT_WEIGHTS, **self.weights}
        try:
            return FitConfig(box_mm=box_mm, working_size=self.working_size, weights=weights)
        except (TypeError, ValueError) as err:
            raise ValueError(f"bad adaptation weights: {err}") from None


def frames_camera(source: str | Path, camera: Camera | None = None) -> Camera | None:
    """The frames' camera: ``camera`` if given, else the folder's ``camera.json`` if it has one
    (None otherwise: every frame of a file list must then name its own camera file)."""
    from .dataset import FOLDER_CAMERA
    from .io import camera_from_args

    if camera is not None:
        return camera
    folder_camera = Path(source) / FOLDER_CAMERA
    if Path(source).is_dir() and folder_camera.is_file():
        return camera_from_args(camera_json=folder_camera)
    return None


class FrameCrops(torch.utils.data.Dataset):
    """Unlabeled depth frames as the fitter's crops (memoized: each frame is segmented once).

    Item ``i``: the :class:`fitting.preprocess.HandCrop` of frame ``i``
    (:func:`fitting.preprocess.prepare` at ``box_mm`` and ``working_size``), or None when the
    frame cannot be read or has no findable hand (logged once; the step goes on without it).
    Only the depth image is read: no keypoint, mask or label file.

    Args:
        source: a folder of depth frames or a file list (:func:`fitting.dataset.list_dataset`).
        camera: the frames' camera (None: a folder's ``camera.json``, else each list entry's
            own camera file).
        box_mm: the crop box, mm; working_size: the crop's side, px.
        depth_scale: millimetres per depth unit; encoding: ``"uint16"`` or ``"nyu"``.

    Raises:
        InputError: as :func:`fitting.dataset.list_dataset`, or no camera for a frame.
    """

    def __init__(self, source, camera: Camera | None, box_mm: float = DEFAULT_BOX_MM,
                 working_size: int = DEFAULT_WORKING_SIZE, depth_scale: float = 1.0, encoding: str = "uint16"):
        from .dataset import list_dataset

        self.items = list_dataset(source)
        camera = frames_camera(source, camera)
        self.camera, self.box_mm, self.working_size = camera, float(box_mm), int(working_size)
        self.depth_scale, self.encoding = depth_scale, encoding
        if camera is None and any(it.camera_json is None for it in self.items):
            raise InputError(f"{source}: no camera for the frames; give --camera FILE.json or --fx/--fy/--cx/--cy "
                             "(or a camera.json in the folder)")
        self.crops: dict[int, object] = {}
        self.failed: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if i not in self.crops:
            from .io import camera_from_args, check_camera_matches, read_depth
            from .observation import Observation
            from .preprocess import prepare

            item = self.items[i]
            try:
                depth = read_depth(item.path, depth_scale=self.depth_scale, encoding=self.encoding)
                camera = self.camera if item.camera_json is None else camera_from_args(
                    width=depth.shape[1], height=depth.shape[0], camera_json=item.camera_json)
                check_camera_matches(camera, depth)
                crop = prepare(Observation(depth=depth, camera=camera, name=item.name), self.box_mm,
                               self.working_size)
            except InputError as err:
                self.failed[item.name] = str(err)
                log.warning("adapt: skipped %s: %s", item.name, err)
                crop = None
            self.crops[i] = crop
        return self.crops[i]


def _crop_list(batch: list) -> list:
    """DataLoader collate: the batch's crops, without the frames that had none."""
    return [c for c in batch if c is not None]


def adaptation_energy(network, fitter, crops: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The unsupervised energy of a network's prediction for B crops, differentiable in its weights.

    The prediction (:class:`fitting.initializer.InitializerOutput` of
    :func:`fitting.initialize.network_input`'s crops, moved to the camera frame by the crop
    centres) is scored by ``fitter``'s energy (:meth:`fitting.Fitter.energy_terms` without the
    offset regularisers) against the crops' targets (:func:`fitting.fitter.stack_targets`).

    Args:
        network: a :class:`fitting.initializer.DepthInitializer` (or a
            ``DistributedDataParallel`` around one), on ``fitter``'s device and dtype.
        fitter: the :class:`fitting.Fitter` whose renderer, weights and hand model score it.
        crops: B :class:`fitting.preprocess.HandCrop` of the fitter's working size.

    Returns:
        (the weighted total (B,), dict name -> (B,) weighted term; both on the fitter's device).
    """
    from .fitter import stack_targets
    from .initialize import network_input

    net = getattr(network, "module", network)
    dev, dt = fitter.device, fitter.dtype
    target = stack_targets(crops, None, dev, dt)
    x, centre = network_input(crops, net.box_mm, net.size, dev, dt)
    params = network(x).parameters(centre)
    terms, _, _ = fitter.energy_terms(params, target, surface_terms=False)
    w = fitter.config.weights
    weighted = {k: w[k] * v for k, v in terms.items() if w[k]}
    return sum(weighted.values()), weighted


@torch.no_grad()
def prediction_metrics(network, fitter, crops: list) -> dict[str, torch.Tensor]:
    """How well a network's direct prediction (no fit) explains B crops: the fitter's metrics
    (:func:`fitting.result.fit_metrics`: silhouette IoU, mean and median absolute depth residual,
    mm) of its render, and the predicted keypoints.

    Args:
        network: a :class:`fitting.initializer.DepthInitializer` on ``fitter``'s device and dtype.
        fitter: the :class:`fitting.Fitter` whose renderer draws the prediction.
        crops: B :class:`fitting.preprocess.HandCrop`.

    Returns:
        dict of ``iou``, ``depth_mean_mm``, ``depth_median_mm`` (B,) and ``keypoints``
        (B, 21, 3) mm, camera frame.
    """
    from .fitter import stack_targets
    from .initialize import network_input
    from .result import fit_metrics

    dev, dt = fitter.device, fitter.dtype
    target = stack_targets(crops, None, dev, dt)
    x, centre = network_input(crops, network.box_mm, network.size, dev, dt)
    out = fitter.model(**network(x).parameters(centre))
    render = fitter.renderer(out.vertices, fitter.model.faces, target.camera)
    return {**fit_metrics(render, target), "keypoints": out.keypoints}


def _finite_grads(net: nn.Module) -> bool:
    return all(bool(torch.isfinite(p.grad).all()) for p in net.parameters() if p.grad is not None)


def adapt(frames, checkpoint, out_dir: str | Path, hand: HandModel, options: AdaptOptions | None = None,
          camera: Camera | None = None, synthetic=None, progress: bool = False) -> list[dict]:
    """Fine-tune a depth initializer on unlabeled depth frames (``handfit adapt``; see the module docstring).

    Args:
        frames: a folder of depth frames (16-bit PNG, ``.tif``) or a file list
            (:func:`fitting.dataset.list_dataset`); only the depth images are read.
        checkpoint: the starting network: a ``handfit train-init`` (or ``adapt``) checkpoint
            file. Ignored when ``OUT/last.pt`` exists (the run resumes from it).
        out_dir: the checkpoint folder (created): ``last.pt`` each epoch, ``best.pt``.
        hand: the hand model the checkpoint was made for.
        options: :class:`AdaptOptions`.
        camera: the frames' camera (batch 1, the frames' size); None: the folder's
            ``camera.json`` or the list's per-frame camera files.
        synthetic: optional ``handfit synth`` dataset folder whose labelled batches are mixed
            in (DeepHPS Eq. 2 loss, ``options.synthetic_weight``).
        progress: a tqdm bar and a line per epoch (rank 0).

    Returns:
        the per-epoch log: dicts of ``epoch``, ``energy`` (the mean weighted total), one mean
        per weighted term, ``synthetic_loss`` (when mixed), ``frames`` (frames with a hand),
        ``skipped_steps`` (non-finite gradients), ``seconds``.

    Raises:
        InputError: no frames, no camera, no frame with a findable hand, a checkpoint that is
            missing, unreadable or of another hand model, an output folder that is a file, or a
            synthetic dataset that is not one (or of another model).
    """
    import torch.distributed as dist
    from tqdm import tqdm

    from .distributed import close, init_from_environment
    from .fitter import Fitter
    from .initializer import _Cached, _from_doc, _targets, initializer_loss, load_checkpoint, save_checkpoint

    options = options or AdaptOptions()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the checkpoint folder is a file")
    last = out / "last.pt"
    start_path = last if last.exists() else Path(checkpoint) if checkpoint is not None else None
    if start_path is None:
        raise InputError("adapt needs a starting checkpoint (a 'handfit train-init' best.pt)")
    doc = load_checkpoint(start_path, hand)
    if start_path == last and "adapted_from" not in doc.get("extra", {}):
        raise InputError(f"{last}: a 'handfit train-init' checkpoint, not an adaptation's; give another --out "
                         "(and this file as --checkpoint)")
    box_mm = float(doc["crop"]["box_mm"])
    data = FrameCrops(frames, camera, box_mm, options.working_size, options.depth_scale,
                      options.encoding)
    syn = None
    if synthetic is not None:
        from .synth_dataset import SynthDataset

        syn = _Cached(SynthDataset(synthetic, hand, box_mm=box_mm, size=int(doc["crop"]["size"]),
                                   crop=options.synthetic_crop))
    out.mkdir(parents=True, exist_ok=True)
    rank, world, dev = init_from_environment(options.device, backend="auto")
    try:
        torch.manual_seed(options.seed)
        hand = hand.to(dev, torch.float32)
        net = _from_doc(doc, hand, start_path).to(dev).eval()  # dropout off: the prediction the fitter uses
        fitter = Fitter(hand, options.renderer, options.fit_config(box_mm), device=dev)
        optimizer = torch.optim.Adam(net.parameters(), lr=options.lr)
        history, start = [], 0
        if start_path == last:
            if "optimizer" in doc:
                optimizer.load_state_dict(doc["optimizer"])
            history, start = list(doc.get("history", [])), int(doc.get("epoch", 0))
            if rank == 0:
                log.info("resuming the adaptation from %s after epoch %d", last, start)
        origin = doc.get("extra", {}).get("adapted_from", str(start_path))
        model = net
        if world > 1:
            model = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None,
                                                        broadcast_buffers=False)
        sampler = torch.utils.data.DistributedSampler(data, world, rank, shuffle=True, seed=options.seed) \
            if world > 1 else None
        g = torch.Generator().manual_seed(options.seed + 1000 * rank)
        syn_batch = options.synthetic_batch_size or options.batch_size
        best = min((h["energy"] for h in history if "energy" in h), default=math.inf)
        for epoch in range(start, options.epochs):
            t0 = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                data, batch_size=options.batch_size, sampler=sampler, shuffle=sampler is None,
                generator=torch.Generator().manual_seed(options.seed + epoch), collate_fn=_crop_list)
            names = ("energy", *LOGGED_TERMS, "synthetic_loss")
            sums = torch.zeros(len(names), dtype=torch.float64)
            frames_seen, steps, skipped = 0, 0, 0
            bar = tqdm(loader, desc=f"adapt {epoch + 1}/{options.epochs}", disable=not progress or rank != 0,
                       leave=False)
            for crops in bar:
                if not crops and world == 1:
                    continue
                if crops:
                    energy, terms = adaptation_energy(model, fitter, crops)
                    loss = energy.mean()
                else:  # every frame of this rank's batch failed: a zero loss keeps the ranks in step
                    loss = sum(p.sum() * 0.0 for p in net.parameters())
                    terms, energy = {}, None
                syn_value = 0.0
                if syn is not None and options.synthetic_weight > 0:
                    idx = torch.randint(len(syn), (syn_batch,), generator=g).tolist()
                    b = torch.utils.data.default_collate([syn[i] for i in idx])
                    depth = b["depth"].to(dev)
                    sl, _ = initializer_loss(model(depth), b["keypoints"].to(dev),
                                             _targets(hand, b["params"], dev, depth.dtype), box_mm)
                    loss = loss + options.synthetic_weight * sl
                    syn_value = float(sl.detach())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if _finite_grads(net):  # the same all-reduced gradients on every rank: the same choice
                    optimizer.step()
                else:
                    skipped += 1
                n = len(crops)
                if n:
                    row = [float(energy.detach().sum())] + [float(terms[k].detach().sum()) if k in terms else 0.0
                                                            for k in LOGGED_TERMS] + [syn_value * n]
                    sums += torch.tensor(row, dtype=torch.float64)
                frames_seen += n
                steps += 1
                bar.set_postfix(energy=f"{float(loss.detach()):.4f}")
                if options.max_steps is not None and steps >= options.max_steps:
                    break
            stats = torch.cat([sums, torch.tensor([float(frames_seen), float(skipped)], dtype=torch.float64)]).to(dev)
            if world > 1:
                dist.all_reduce(stats)
            stats = stats.cpu()
            count = float(stats[len(names)])
            if count == 0:
                raise InputError(f"{frames}: no frame with a findable hand ({len(data.failed)} skipped; first: "
                                 f"{next(iter(data.failed.values()), 'none')})")
            mean = {k: float(stats[i]) / count for i, k in enumerate(names)}
            entry = {"epoch": epoch + 1, "energy": mean["energy"],
                     **{k: mean[k] for k in LOGGED_TERMS if fitter.config.weights.get(k)},
                     "frames": int(count), "skipped_steps": int(stats[len(names) + 1]),
                     "seconds": time.perf_counter() - t0}
            if syn is not None:
                entry["synthetic_loss"] = mean["synthetic_loss"]
            history.append(entry)
            if rank == 0:
                parts = ", ".join(f"{k} {entry[k]:.4g}" for k in LOGGED_TERMS if k in entry)
                line = (f"adapt epoch {entry['epoch']}/{options.epochs}: energy {entry['energy']:.4f} ({parts})"
                        + (f", synthetic loss {entry['synthetic_loss']:.4f}" if syn is not None else "")
                        + f", {entry['frames']} frames, {entry['seconds']:.1f} s")
                log.info(line)
                if progress:
                    print(line, flush=True)
                extra = {"adapted_from": origin, "frames": str(frames), "renderer": options.renderer,
                         "working_size": options.working_size, "synthetic": None if synthetic is None
                         else str(synthetic), "synthetic_weight": options.synthetic_weight,
                         "synthetic_crop": options.synthetic_crop, "world_size": world}
                save_checkpoint(last, net, optimizer, epoch + 1, history, extra)
                if entry["energy"] < best:
                    best = entry["energy"]
                    save_checkpoint(out / "best.pt", net, None, epoch + 1, history, extra)
            if world > 1:
                dist.barrier()
        return history
    finally:
        close()
