"""A DeepHPS-style depth initializer: a CNN from a normalized depth crop to hand pose and shape.

Malik et al., "DeepHPS", 3DV 2018 (seed 002), Sec. 4.1 and 6.1, with its supplementary (seed
000): a 96x96 depth crop around the hand centre (a box of ``box_mm``, depth normalized to
[-1, 1], as :class:`fitting.synth_dataset.SynthDataset` makes it) goes through parallel CNNs,

- the **pose branch** (DeepHPS' PoseCNN; a small plain CNN here instead of REN): the global
  rotation as the 6D representation (Zhou et al., CVPR 2019; :func:`pytorch3d.transforms.
  rotation_6d_to_matrix`), the articulation angles ``theta`` (a sigmoid onto each DoF's joint
  limits, so every prediction is within them) and the translation relative to the crop centre
  (a tanh onto +-box/2);
- the **shape branch** (DeepHPS' alpha-CNN and beta-CNN, Sec. 4.1: three convolutions of
  kernels 5, 5, 3, max pools of strides 4 and 2, 8 feature maps of 12x12, two dropout-0.3
  fully connected layers, ReLU; ours have 256 instead of 1024 neurons): the bone-length scales
  ``alpha`` in 1 +- 0.3 and the shape coefficients ``beta`` in +-2 (the fitter's ranges);

and our :class:`hands.HandModel` is the differentiable output layer (DeepHPS' HPSL, Eq. 1)
giving the 21 keypoints and the vertices, in mm relative to the crop centre. The training loss
is DeepHPS Eq. 2 with the weights of its Eq. 8 (``L = L_J + L_V``, both weights 1): half the
squared Euclidean distance of the keypoints and of the vertices to their truth, in the paper's
normalized units (mm over half the box, Sec. 6.1), each averaged over its points and the batch
so that the two terms weigh alike whatever the vertex count.

Checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_initializer`) hold
the network's weights with the hand model's identity (source, vertex count, DoF names, shape
and bone-scale counts) and the crop (``box_mm``, ``size``); loading one with another model or
crop is an :class:`fitting.errors.InputError`. :func:`train` (``handfit train-init``) trains on
a ``handfit synth`` dataset, with ``torch.nn.parallel.DistributedDataParallel`` under
``torchrun``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path

import torch
from pytorch3d.transforms import matrix_to_axis_angle, rotation_6d_to_matrix
from torch import nn

from hands import HandModel

from .errors import InputError

__all__ = ["DepthInitializer", "InitializerOutput", "initializer_loss", "hand_identity", "save_checkpoint",
           "load_checkpoint", "load_initializer", "export_checkpoint", "default_checkpoint", "TrainOptions", "train",
           "CHECKPOINT_FORMAT", "DEFAULT_CHECKPOINT"]

log = logging.getLogger("handfit")

#: The trained checkpoint shipped in the package (for the default hand model, 220 mm box, 96 px;
#: half-precision weights): ``Fitter(init="network")`` and ``--init network`` use it when no
#: checkpoint is given. README "Initializer network" gives the commands that reproduce it.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "data" / "initializer_default.pt"
CHECKPOINT_FORMAT = "handfit-depth-initializer"
CHECKPOINT_VERSION = 1
#: The ranges the output layers map onto (the fitter's clamps, :mod:`fitting.fitter`).
ALPHA_RANGE = 0.3
BETA_RANGE = 2.0


@dataclasses.dataclass
class InitializerOutput:
    """What :class:`DepthInitializer` predicts for a batch of B crops.

    Attributes:
        rotation: (B, 3, 3) global rotation (camera frame).
        transl: (B, 3) mm, the hand model's ``transl`` relative to the crop centre.
        theta: (B, D) rad, within the model's joint limits.
        alpha: (B, 6) bone-length scales; beta: (B, S) shape coefficients.
        beta: see ``alpha``.
        keypoints: (B, 21, 3) mm relative to the crop centre; vertices: (B, V, 3) likewise.
        vertices: see ``keypoints``.
    """

    rotation: torch.Tensor
    transl: torch.Tensor
    theta: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    keypoints: torch.Tensor
    vertices: torch.Tensor

    def parameters(self, centre: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The :class:`hands.HandModel` parameters (global_orient axis-angle, transl, theta,
        alpha, beta, zero offsets) of the prediction; ``centre`` (B, 3) or (3,) mm, the crop
        centre, moves ``transl`` into the camera frame (None: relative to the centre)."""
        transl = self.transl if centre is None else self.transl + centre
        B, V = self.vertices.shape[:2]
        return {"global_orient": matrix_to_axis_angle(self.rotation), "transl": transl, "theta": self.theta,
                "alpha": self.alpha, "beta": self.beta, "offsets": self.vertices.new_zeros(B, V, 3)}


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class _ShapeCNN(nn.Module):
    """DeepHPS' alpha-/beta-CNN (Sec. 4.1): conv 5 -> pool /4 -> conv 5 -> pool /2 -> conv 3
    (8 maps of 12x12 on a 96 px crop) -> FC -> FC (dropout) -> ``out`` values."""

    def __init__(self, size: int, out: int, width: int, dropout: float):
        super().__init__()
        self.features = nn.Sequential(_conv(1, 8, 5), nn.ReLU(), nn.MaxPool2d(4), _conv(8, 8, 5), nn.ReLU(),
                                      nn.MaxPool2d(2), _conv(8, 8, 3), nn.ReLU(), nn.Flatten())
        n = 8 * (size // 8) ** 2
        self.head = nn.Sequential(nn.Linear(n, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width),
                                  nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, out))

    def forward(self, x):
        return self.head(self.features(x))


class _PoseCNN(nn.Module):
    """Four stride-2 stages (conv 3 + conv 3, each with group normalization (Wu and He, ECCV 2018)
    and ReLU; max pool) to size/16, then two FC layers."""

    def __init__(self, size: int, out: int, channels: tuple[int, ...], width: int, dropout: float, norm: bool):
        super().__init__()
        layers, cin = [], 1
        gn = (lambda c: nn.GroupNorm(min(8, c), c)) if norm else (lambda c: nn.Identity())  # noqa: E731
        for c in channels:
            layers += [_conv(cin, c, 3), gn(c), nn.ReLU(), _conv(c, c, 3), gn(c), nn.ReLU(), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        n = cin * (size // 2 ** len(channels)) ** 2
        self.head = nn.Sequential(nn.Linear(n, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width),
                                  nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, out))

    def forward(self, x):
        return self.head(self.features(x))


class DepthInitializer(nn.Module):
    """The DeepHPS-style initializer network (see the module docstring).

    Args:
        hand: the :class:`hands.HandModel` used as the output layer (its buffers are not part
            of :meth:`network_state`; a checkpoint records its identity instead).
        box_mm: side of the crop box, mm (the crop of :class:`fitting.synth_dataset.SynthDataset`).
        size: crop side in px (a multiple of 16).
        channels: the pose branch's channels per stage; width: its FC width.
        width: see ``channels``.
        shape_width: the shape branch's FC width (DeepHPS: 1024).
        dropout: dropout ratio of the FC layers (DeepHPS: 0.3).
        norm: group normalization in the pose branch (per sample, so a DDP step equals a
            single-process step, unlike batch normalization).

    Forward: ``depth`` (B, 1, size, size) normalized crop -> :class:`InitializerOutput`, on
    ``depth``'s device and dtype (the module must have been moved there with ``.to``).

    Raises:
        ValueError: ``size`` not a multiple of 16, or ``depth`` of the wrong shape.
    """

    def __init__(self, hand: HandModel, box_mm: float = 220.0, size: int = 96, channels: tuple[int, ...] = (16, 32, 64, 64),
                 width: int = 256, shape_width: int = 256, dropout: float = 0.3, norm: bool = True):
        super().__init__()
        if size % 16 or size < 16:
            raise ValueError(f"size must be a positive multiple of 16, got {size}")
        self.hand = hand
        self.box_mm, self.size = float(box_mm), int(size)
        self.architecture = {"channels": list(channels), "width": width, "shape_width": shape_width, "dropout": dropout,
                             "norm": bool(norm)}
        D = hand.num_dofs
        self.pose = _PoseCNN(size, 6 + D + 3, tuple(channels), width, dropout, norm)
        self.alpha_cnn = _ShapeCNN(size, hand.num_bone_scales, shape_width, dropout)
        self.beta_cnn = _ShapeCNN(size, hand.num_shapes, shape_width, dropout)
        with torch.no_grad():  # start at the identity rotation, mid-limit angles, the crop centre, the template
            last = self.pose.head[-1]
            last.weight.mul_(0.1)
            last.bias.zero_()
            last.bias[:6] = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
            for cnn in (self.alpha_cnn, self.beta_cnn):
                cnn.head[-1].weight.mul_(0.1)
                cnn.head[-1].bias.zero_()

    def network_state(self) -> dict[str, torch.Tensor]:
        """The network's own weights (the state dict without the hand model's buffers)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("hand.")}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, depth: torch.Tensor) -> InitializerOutput:
        if depth.ndim != 4 or depth.shape[1:] != (1, self.size, self.size):
            raise ValueError(f"depth must be (B, 1, {self.size}, {self.size}), got {tuple(depth.shape)}")
        hand, D = self.hand, self.hand.num_dofs
        p = self.pose(depth)
        rotation = rotation_6d_to_matrix(p[:, :6])
        lower, upper = hand.dof_lower.to(p), hand.dof_upper.to(p)
        theta = lower + (upper - lower) * torch.sigmoid(p[:, 6:6 + D])
        transl = torch.tanh(p[:, 6 + D:]) * (self.box_mm / 2)
        alpha = 1.0 + ALPHA_RANGE * torch.tanh(self.alpha_cnn(depth))
        beta = BETA_RANGE * torch.tanh(self.beta_cnn(depth))
        # the hand in its canonical frame, then the rigid transform (the model's own x -> R x + t)
        out = hand(theta=theta, alpha=alpha, beta=beta)
        keypoints = out.keypoints @ rotation.transpose(1, 2) + transl[:, None]
        vertices = out.vertices @ rotation.transpose(1, 2) + transl[:, None]
        return InitializerOutput(rotation, transl, theta, alpha, beta, keypoints, vertices)


def initializer_loss(pred: InitializerOutput, keypoints: torch.Tensor, vertices: torch.Tensor,
                     box_mm: float) -> tuple[torch.Tensor, dict[str, float]]:
    """DeepHPS Eq. 2 with Eq. 8's weights: ``L = L_J + L_V``.

    ``L_J = 1/2 ||P - P_GT||^2`` and ``L_V = 1/2 ||V - V_GT||^2`` in the paper's normalized
    units (mm over ``box_mm / 2``, Sec. 6.1), each averaged over its points and the batch.

    Args:
        pred: the network's :class:`InitializerOutput`.
        keypoints: (B, 21, 3) true keypoints, mm relative to the crop centre.
        vertices: (B, V, 3) true vertices, mm relative to the crop centre.
        box_mm: the crop box side, mm.

    Returns:
        (the scalar loss, {"joints": L_J, "vertices": L_V, "mpjpe_mm": the batch's MPJPE}).
    """
    half = box_mm / 2
    lj = 0.5 * ((pred.keypoints - keypoints) / half).pow(2).sum(-1).mean()
    lv = 0.5 * ((pred.vertices - vertices) / half).pow(2).sum(-1).mean()
    with torch.no_grad():
        mpjpe = (pred.keypoints - keypoints).norm(dim=-1).mean()
    return lj + lv, {"joints": float(lj.detach()), "vertices": float(lv.detach()), "mpjpe_mm": float(mpjpe)}


# -- checkpoints -----------------------------------------------------------------------------
def hand_identity(hand: HandModel) -> dict:
    """What a checkpoint records of its hand model: source name, vertex count, DoF names, shape
    and bone-scale counts."""
    return {"source": str(hand.data.source), "num_vertices": int(hand.num_vertices),
            "dof_names": list(hand.data.dof_names), "num_shapes": int(hand.num_shapes),
            "num_bone_scales": int(hand.num_bone_scales)}


def save_checkpoint(path: str | Path, net: DepthInitializer, optimizer: torch.optim.Optimizer | None = None,
                    epoch: int = 0, history: list | None = None, extra: dict | None = None) -> Path:
    """Write ``net`` (and the optimizer's state, the epoch count, the per-epoch log) to ``path``
    atomically (a temporary file renamed).

    Returns:
        the path written.
    """
    path = Path(path)
    doc = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "hand": hand_identity(net.hand),
           "crop": {"box_mm": net.box_mm, "size": net.size}, "architecture": dict(net.architecture),
           "network": {k: v.detach().cpu() for k, v in net.network_state().items()}, "epoch": int(epoch),
           "history": list(history or []), "extra": dict(extra or {})}
    if optimizer is not None:
        doc["optimizer"] = optimizer.state_dict()
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(doc, tmp)
    os.replace(tmp, path)
    return path


def export_checkpoint(source: str | Path, path: str | Path, half: bool = True) -> Path:
    """A slim copy of a checkpoint for shipping: the weights (float16 when ``half``; loading casts
    them back to the hand model's dtype), the identity, crop, architecture, epoch and log,
    without the optimizer's state.

    Raises:
        InputError: as :func:`load_checkpoint`.
    """
    doc = load_checkpoint(source)
    doc.pop("optimizer", None)
    if half:
        doc["network"] = {k: v.half() if v.is_floating_point() else v for k, v in doc["network"].items()}
    doc["extra"] = {**doc.get("extra", {}), "exported_from": str(source), "half": bool(half)}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(doc, tmp)
    os.replace(tmp, path)
    return path


def default_checkpoint(hand: HandModel) -> Path:
    """The shipped checkpoint (:data:`DEFAULT_CHECKPOINT`) if it was made for ``hand``'s model.

    Raises:
        InputError: the package has no shipped checkpoint, or ``hand`` is another model than
            the default one it was trained for (train one with ``handfit train-init``).
    """
    if not DEFAULT_CHECKPOINT.is_file():
        raise InputError("init='network' needs a checkpoint: this installation has no shipped "
                         f"{DEFAULT_CHECKPOINT.name}; give a 'handfit train-init' best.pt")
    doc = torch.load(DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)
    if doc.get("hand") != hand_identity(hand):
        raise InputError("init='network' needs a checkpoint for this hand model: the shipped one is for the default "
                         "hand model; train one with 'handfit train-init' and give it")
    return DEFAULT_CHECKPOINT


def load_checkpoint(path: str | Path, hand: HandModel | None = None, box_mm: float | None = None,
                    size: int | None = None) -> dict:
    """Read a checkpoint (``torch.load(weights_only=True)``: no code runs) and check it.

    Args:
        path: the file.
        hand: when given, the checkpoint's hand identity must be this model's.
        box_mm, size: when given, the checkpoint's crop must be this one.
        size: see ``box_mm``.

    Returns:
        the checkpoint's dict (``hand``, ``crop``, ``architecture``, ``network``, ``epoch``,
        ``history``, ``optimizer`` when saved).

    Raises:
        InputError: a missing or unreadable file, not an initializer checkpoint, or made with
            another hand model or crop (the message names the difference).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise InputError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a handfit depth-initializer checkpoint")
    if doc.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"{path}: checkpoint version {doc.get('version')!r}, this handfit reads {CHECKPOINT_VERSION}")
    if hand is not None:
        mine, theirs = hand_identity(hand), doc.get("hand", {})
        for key in ("source", "num_vertices", "dof_names", "num_shapes", "num_bone_scales"):
            if theirs.get(key) != mine[key]:
                what = (f"{len(theirs.get(key) or [])} DoF named otherwise" if key == "dof_names"
                        else f"{key} {theirs.get(key)!r}")
                raise InputError(f"{path}: the checkpoint was trained for another hand model ({what}; this model has "
                                 f"{mine[key] if key != 'dof_names' else len(mine[key])}"
                                 f"{' DoF' if key == 'dof_names' else ''}); use that model or retrain")
    crop = doc.get("crop", {})
    if box_mm is not None and not math.isclose(float(crop.get("box_mm", -1)), float(box_mm)):
        raise InputError(f"{path}: the checkpoint was trained on a {float(crop.get('box_mm', 0)):g} mm crop box, "
                         f"not {box_mm:g} mm")
    if size is not None and int(crop.get("size", -1)) != int(size):
        raise InputError(f"{path}: the checkpoint was trained on {crop.get('size')} px crops, not {size} px")
    return doc


def load_initializer(path: str | Path, hand: HandModel, box_mm: float | None = None, size: int | None = None,
                     device=None) -> DepthInitializer:
    """A :class:`DepthInitializer` with a checkpoint's weights (see :func:`load_checkpoint`),
    in eval mode, on ``device`` (default: the hand model's) and the hand model's dtype.

    Raises:
        InputError: as :func:`load_checkpoint`, or weights that do not fit the architecture.
    """
    doc = load_checkpoint(path, hand, box_mm, size)
    net = _from_doc(doc, hand, path)
    dev = hand.v_template.device if device is None else device
    return net.to(device=dev, dtype=hand.v_template.dtype).eval()


def _from_doc(doc: dict, hand: HandModel, path) -> DepthInitializer:
    arch = doc.get("architecture", {})
    try:
        net = DepthInitializer(hand, box_mm=doc["crop"]["box_mm"], size=doc["crop"]["size"],
                               channels=tuple(arch["channels"]), width=arch["width"],
                               shape_width=arch["shape_width"], dropout=arch["dropout"], norm=arch["norm"])
        missing, unexpected = net.load_state_dict(doc["network"], strict=False)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{path}: the checkpoint's weights do not fit its architecture ({type(err).__name__})") from None
    missing = [k for k in missing if not k.startswith("hand.")]
    if missing or unexpected:
        raise InputError(f"{path}: the checkpoint's weights do not fit its architecture "
                         f"({len(missing)} missing, {len(unexpected)} unexpected)")
    return net.to(hand.v_template.dtype)


def check_schedule(epochs: int, batch_size: int, lr: float) -> None:
    """The checks a training schedule's options share (``TrainOptions``, ``AdaptOptions``).

    Raises:
        ValueError: epochs or batch size below 1, a learning rate not finite and > 0.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch size must be >= 1, got {epochs} and {batch_size}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"the learning rate must be > 0, got {lr}")


# -- training ---------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainOptions:
    """Settings of :func:`train`.

    Attributes:
        epochs: total epochs (a resumed run trains up to this count).
        batch_size: samples per step per process.
        lr: Adam's learning rate (DeepHPS used SGD at 1e-5 with momentum 0.9 and batches of
            256 on a GPU; Adam at 1e-3 converges in far fewer epochs on a CPU).
        weight_decay: Adam's weight decay.
        val_fraction: share of the samples held out for the validation MPJPE (a fixed split).
        seed: the weights' initialization, the split and the shuffling.
        box_mm, size: the crop.
        size: see ``box_mm``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        workers: DataLoader worker processes.
        max_steps: stop each epoch after this many steps (None: the whole epoch); for smoke tests.

    Raises:
        ValueError: a value out of range.
    """

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    seed: int = 0
    box_mm: float = 220.0
    size: int = 96
    device: str = "auto"
    workers: int = 0
    max_steps: int | None = None

    def __post_init__(self):
        check_schedule(self.epochs, self.batch_size, self.lr)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"the validation fraction must be in (0, 1), got {self.val_fraction}")
        if not 100.0 <= self.box_mm <= 400.0:
            raise ValueError(f"the crop box must be 100-400 mm, got {self.box_mm}")
        if self.size % 16 or not 16 <= self.size <= 512:
            raise ValueError(f"the crop size must be a multiple of 16 in 16-512 px, got {self.size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


class _Cached(torch.utils.data.Dataset):
    """Memoizes a dataset's items (the crops are cut once, not every epoch); keeps what training
    needs: depth, keypoints and the parameters relative to the crop centre."""

    def __init__(self, base):
        self.base, self.items = base, {}

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i not in self.items:
            s = self.base[i]
            p = {k: v for k, v in s["params"].items() if k != "offsets"}
            p["transl"] = p["transl"] - s["centre"]
            self.items[i] = {"depth": s["depth"], "keypoints": s["keypoints"], "params": p}
        return self.items[i]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices of a fixed random split of ``n`` samples (at least one of
    each when ``n >= 2``)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = min(max(1, round(n * val_fraction)), n - 1)
    return sorted(order[k:]), sorted(order[:k])


def _targets(hand: HandModel, params: dict, dev, dt) -> torch.Tensor:
    with torch.no_grad():
        p = {k: v.to(dev, dt) for k, v in params.items() if k != "offsets"}
        return hand(**p).vertices


def train(dataset_dir: str | Path, out_dir: str | Path, hand: HandModel, options: TrainOptions | None = None,
          progress: bool = False) -> list[dict]:
    """Train a :class:`DepthInitializer` on a ``handfit synth`` dataset (``handfit train-init``).

    Per epoch it logs (and prints on rank 0) the mean training loss and the validation MPJPE
    (mm) on the held-out split, and writes ``OUT/last.pt`` (with the optimizer's state) and,
    when the validation MPJPE is the lowest so far, ``OUT/best.pt``. If ``OUT/last.pt``
    exists the run resumes from it (weights, optimizer state, epoch, log) up to
    ``options.epochs``, at ``options.lr`` (a rerun with a lower rate fine-tunes). Under ``torchrun`` every process trains on its
    ``DistributedSampler`` share through ``DistributedDataParallel`` (gloo on the CPU, NCCL
    on CUDA); rank 0 writes the checkpoints.

    Args:
        dataset_dir: a ``handfit synth`` folder.
        out_dir: the checkpoint folder (created).
        hand: the hand model the dataset was made with.
        options: :class:`TrainOptions`.
        progress: a tqdm bar over each epoch's steps (rank 0).

    Returns:
        the per-epoch log: dicts of ``epoch``, ``loss``, ``joints``, ``vertices``,
        ``train_mpjpe_mm``, ``val_mpjpe_mm``, ``seconds``.

    Raises:
        InputError: not a dataset (or one of another model), fewer than 2 samples, an output
            folder that is not a folder, or a checkpoint of other settings in it.
    """
    import torch.distributed as dist
    from tqdm import tqdm

    from .distributed import close, init_from_environment
    from .synth_dataset import SynthDataset

    options = options or TrainOptions()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the checkpoint folder is a file")
    data = SynthDataset(dataset_dir, hand, box_mm=options.box_mm, size=options.size)
    if len(data) < 2:
        raise InputError(f"{dataset_dir}: {len(data)} sample; training needs at least 2 (one held out)")
    out.mkdir(parents=True, exist_ok=True)
    rank, world, dev = init_from_environment(options.device, backend="auto")
    try:
        torch.manual_seed(options.seed)
        hand = hand.to(dev, torch.float32)
        net = DepthInitializer(hand, box_mm=options.box_mm, size=options.size).to(dev)
        optimizer = torch.optim.Adam(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        history, start = [], 0
        last = out / "last.pt"
        if last.exists():
            doc = load_checkpoint(last, hand, options.box_mm, options.size)
            resumed = _from_doc(doc, hand, last)
            net.load_state_dict(resumed.state_dict())
            if "optimizer" in doc:
                optimizer.load_state_dict(doc["optimizer"])
                for group in optimizer.param_groups:  # a rerun continues at the rate it is given
                    group["lr"] = options.lr
            history, start = list(doc.get("history", [])), int(doc.get("epoch", 0))
            if rank == 0:
                log.info("resuming from %s after epoch %d", last, start)
        model = net
        if world > 1:
            model = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None,
                                                        broadcast_buffers=False)  # only the hand's constants
        cached = _Cached(data)
        train_idx, val_idx = split_indices(len(data), options.val_fraction, options.seed)
        train_set, val_set = torch.utils.data.Subset(cached, train_idx), torch.utils.data.Subset(cached, val_idx)
        sampler = torch.utils.data.DistributedSampler(train_set, world, rank, shuffle=True, seed=options.seed) \
            if world > 1 else None
        g = torch.Generator().manual_seed(options.seed)
        loader_kw = dict(batch_size=options.batch_size, num_workers=options.workers,
                         persistent_workers=False)
        # each rank scores every world-th validation sample (no padding: the all-reduced mean is exact)
        val_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val_set, range(rank, len(val_set), world)),
                                                 **loader_kw)
        best = min((h["val_mpjpe_mm"] for h in history), default=math.inf)
        for epoch in range(start, options.epochs):
            t0 = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
            g.manual_seed(options.seed + epoch)
            loader = torch.utils.data.DataLoader(train_set, sampler=sampler, shuffle=sampler is None,
                                                 generator=g, drop_last=len(train_set) > options.batch_size * world,
                                                 **loader_kw)
            model.train()
            sums, steps = torch.zeros(4, dtype=torch.float64), 0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{options.epochs}", disable=not progress or rank != 0,
                       leave=False)
            for batch in bar:
                depth = batch["depth"].to(dev)
                kp = batch["keypoints"].to(dev)
                verts = _targets(hand, batch["params"], dev, depth.dtype)
                loss, parts = initializer_loss(model(depth), kp, verts, options.box_mm)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())
                sums += torch.tensor([value, parts["joints"], parts["vertices"], parts["mpjpe_mm"]],
                                     dtype=torch.float64)
                steps += 1
                bar.set_postfix(loss=f"{value:.4f}", mpjpe=f"{parts['mpjpe_mm']:.1f}")
                if options.max_steps is not None and steps >= options.max_steps:
                    break
            val = validation_mpjpe(net, val_loader, dev)
            # on the training device: NCCL reduces only CUDA tensors
            stats = torch.cat([sums, torch.tensor([float(steps)], dtype=torch.float64), val]).to(dev)
            if world > 1:
                dist.all_reduce(stats)
            mean = stats[:4] / stats[4].clamp(min=1)
            entry = {"epoch": epoch + 1, "loss": float(mean[0]), "joints": float(mean[1]), "vertices": float(mean[2]),
                     "train_mpjpe_mm": float(mean[3]), "val_mpjpe_mm": float(stats[5] / stats[6].clamp(min=1)),
                     "seconds": time.perf_counter() - t0}
            history.append(entry)
            if rank == 0:
                line = (f"epoch {entry['epoch']}/{options.epochs}: loss {entry['loss']:.4f} (joints "
                        f"{entry['joints']:.4f}, vertices {entry['vertices']:.4f}), train MPJPE "
                        f"{entry['train_mpjpe_mm']:.1f} mm, validation MPJPE {entry['val_mpjpe_mm']:.1f} mm, "
                        f"{entry['seconds']:.1f} s")
                log.info(line)
                if progress:
                    print(line, flush=True)
                extra = {"dataset": str(dataset_dir), "world_size": world, "train_samples": len(train_idx),
                         "val_samples": len(val_idx)}
                save_checkpoint(last, net, optimizer, epoch + 1, history, extra)
                if entry["val_mpjpe_mm"] < best:
                    best = entry["val_mpjpe_mm"]
                    save_checkpoint(out / "best.pt", net, None, epoch + 1, history, extra)
            if world > 1:
                dist.barrier()
        return history
    finally:
        close()


@torch.no_grad()
def validation_mpjpe(net: DepthInitializer, loader, dev) -> torch.Tensor:
    """(2,) float64: the sum of the per-sample MPJPE (mm) over ``loader`` and the sample count."""
    was = net.training
    net.eval()
    total, count = 0.0, 0
    for batch in loader:
        pred = net(batch["depth"].to(dev))
        err = (pred.keypoints - batch["keypoints"].to(dev)).norm(dim=-1).mean(-1)
        total += float(err.sum())
        count += err.numel()
    net.train(was)
    return torch.tensor([total, float(count)], dtype=torch.float64)
