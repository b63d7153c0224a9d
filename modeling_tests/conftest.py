"""Shared pytest fixtures and settings."""

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir
from tiny_models import ORIGINAL_FERRET_FIXTURES

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):  # keep Hypothesis' caches out of the repository
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "transformers-ferret-hypothesis")


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Reference outputs of the original Ferret code, in the repository: `modeling_tests/fixtures/original_ferret`."""
    return ORIGINAL_FERRET_FIXTURES


def pytest_configure(config):
    """One intra-op thread: the tiny test models are far faster single-threaded (thread start-up dominates their
    matmuls), and results do not depend on the machine's core count."""
    import torch

    torch.set_num_threads(1)
