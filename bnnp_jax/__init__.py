"""bnnp_jax: Bayesian neural network processes with meta-learned priors and amortised inference."""

import os as _os

# jaxlib's CPU Cholesky/triangular solves call the host LAPACK (OpenBLAS) once
# per matrix of a batch; OpenBLAS's own spinning threads then fight XLA's for
# the cores, which we measured as up to ~100x slower steps on a 2-core machine.
# One BLAS thread per call is the fast setting here; users can override it by
# setting the variable before importing bnnp_jax (or numpy/scipy/jax).
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from bnnp_jax.gaussian import Gaussian, kl_divergence

__all__ = ["Gaussian", "kl_divergence"]
__version__ = "0.1.0"
