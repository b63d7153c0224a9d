"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Reference outputs of the original Ferret code: `shared/parity`, checked out beside this repository."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "parity"


def pytest_configure(config):
    """One intra-op thread: the tiny test models are far faster single-threaded (thread start-up dominates their
    matmuls), and results do not depend on the machine's core count."""
    import torch

    torch.set_num_threads(1)
