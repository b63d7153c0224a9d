"""Shared pytest fixtures."""

from pathlib import Path

import pytest
from tiny_models import ORIGINAL_FERRET_FIXTURES


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Reference outputs of the original Ferret code, in the repository: `modeling_tests/fixtures/original_ferret`."""
    return ORIGINAL_FERRET_FIXTURES


def pytest_configure(config):
    """One intra-op thread: the tiny test models are far faster single-threaded (thread start-up dominates their
    matmuls), and results do not depend on the machine's core count."""
    import torch

    torch.set_num_threads(1)
