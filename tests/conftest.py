"""Shared small fixtures for the test suite (keep this file minimal)."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (setup.cfg's addopts) there is one worker per core: each keeps to one torch thread, as the
    # bundle subprocesses do, rather than every worker's thread pool fighting the others for every core.
    torch.set_num_threads(1)


def _make_maps(shape=(3, 4, 5), dtype=torch.float64, device="cpu", seed=0, with_r2=False, with_mt=False):
    """Brain-like qMRI maps with values in physical ranges: PD, R1 and R2* in 1/s (R2, MT optional)."""
    g = torch.Generator().manual_seed(seed)

    def uniform(low, high):
        return (low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)

    maps = {"pd": uniform(0.5, 1.0), "r1": uniform(0.2, 1.5), "r2s": uniform(5.0, 40.0)}
    if with_r2:
        maps["r2"] = uniform(4.0, 20.0)
    if with_mt:
        maps["mt"] = uniform(0.0, 0.05)
    return maps


@pytest.fixture
def make_maps():
    """Factory for small, seeded, physically valid qMRI maps: ``make_maps(shape, dtype, device, seed, ...)``."""
    return _make_maps


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test, as the bundle subprocesses run (``bundle_runner``): tiny models on a
    shared 2-core machine run ~20x slower with two threads fighting other processes. Use it in a module with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
