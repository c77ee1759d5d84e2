"""Shared fixtures. ``x64`` runs a test with float64 enabled (a scoped switch,
so float32 tests elsewhere keep their default)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bnnp_jax/__init__.py
# One OpenMP thread per xdist worker: scikit-learn's OpenMP loops (t-SNE in the digits
# plot) spin-wait for a core the other worker holds, which made one test take minutes.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Compiling hundreds of small programs, not running them, is most of this suite's
# time. XLA's backend optimisation passes are off here, which halves the compile, and
# the CPU backend emits fusions with its classic elemental emitter instead of the MLIR
# fusion emitters, which cuts it about 3x more (same programs and semantics; the
# kernels run slower). Subprocesses inherit the flags. The benchmarks and the CLI run at XLA's default level, and
# BNNP_TEST_FULL_OPT=1 runs the suite at that level too.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
                " --xla_cpu_use_fusion_emitters=false")
if os.environ.get("BNNP_TEST_FULL_OPT") != "1":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax
import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield
