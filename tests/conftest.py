"""Shared test setup: everything offline, deterministic, and sized for 2 CPU cores."""

import os

import pytest

# albumentations (imported by img2dataset) contacts PyPI on import unless told not to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for a test's torch work: on 2 shared cores more only adds contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
