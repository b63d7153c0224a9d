"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Reference outputs of the original Ferret code: `shared/parity`, checked out beside this repository."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "parity"
