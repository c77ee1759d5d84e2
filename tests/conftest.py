"""Shared fixtures. ``x64`` runs a test with float64 enabled (a scoped switch,
so float32 tests elsewhere keep their default)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bnnp_jax/__init__.py

import jax
import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield
