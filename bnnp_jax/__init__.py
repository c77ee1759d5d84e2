"""bnnp_jax: Bayesian neural network processes with meta-learned priors and amortised inference.

The front door: every name in ``__all__`` is importable from ``bnnp_jax``
(resolved on first use, so ``import bnnp_jax`` stays cheap). The subpackages
hold the rest (README, "Design"):

- BNNP: :func:`init`, :func:`posterior_samples`, :func:`predict`,
  :func:`prior_samples`, :func:`masked_posterior`, :func:`masked_functions`
  (one task; the public functions validate concrete inputs on the host, see
  the README's jit rule) and the objectives :func:`pp_avi`, :func:`avi`,
  :func:`npml` over a padded batch of tasks.
- Baselines (SPEC section 8): :func:`baseline_fit`, :func:`baseline_predict`,
  :func:`baseline_elbo` over :data:`BASELINES`, on a :class:`BNNModel`
  (:func:`fixed_prior_model`, :func:`from_bnnp`); :func:`numpyro_model` is the
  same model for numpyro.
- Runs: :func:`load_config`, :func:`train`, :func:`load_run`.
- Building blocks: :class:`Gaussian`, :func:`kl_divergence`; :func:`after` and
  :func:`unordered_lapack_calls` to keep your own batched CPU LAPACK calls from
  running beside ours in one program (README, "Nothing hangs").
"""

import importlib as _importlib
import os as _os

# jaxlib's CPU Cholesky/triangular solves call the host LAPACK (OpenBLAS) once
# per matrix of a batch; OpenBLAS's own spinning threads then fight XLA's for
# the cores, which we measured as up to ~100x slower steps on a 2-core machine.
# One BLAS thread per call is the fast setting here; users can override it by
# setting the variable before importing bnnp_jax (or numpy/scipy/jax).
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

# public name -> (module, attribute)
_FRONT_DOOR = {
    "Gaussian": ("bnnp_jax.core.gaussian", "Gaussian"),
    "kl_divergence": ("bnnp_jax.core.gaussian", "kl_divergence"),
    "after": ("bnnp_jax.core.linalg", "after"),
    "unordered_lapack_calls": ("bnnp_jax.core.lapack_order", "unordered_lapack_calls"),
    "BNNPConfig": ("bnnp_jax.bnnp.model", "BNNPConfig"),
    "BNNPParams": ("bnnp_jax.bnnp.model", "BNNPParams"),
    "init": ("bnnp_jax.bnnp.model", "init"),
    "posterior_samples": ("bnnp_jax.bnnp.model", "posterior_samples"),
    "predict": ("bnnp_jax.bnnp.model", "predict"),
    "prior_samples": ("bnnp_jax.bnnp.model", "prior_samples"),
    "masked_posterior": ("bnnp_jax.bnnp.model", "masked_posterior"),
    "masked_functions": ("bnnp_jax.bnnp.model", "masked_functions"),
    "pp_avi": ("bnnp_jax.bnnp.objectives", "pp_avi"),
    "avi": ("bnnp_jax.bnnp.objectives", "avi"),
    "npml": ("bnnp_jax.bnnp.objectives", "npml"),
    "BNNModel": ("bnnp_jax.inference.model", "BNNModel"),
    "fixed_prior_model": ("bnnp_jax.inference.model", "fixed_prior_model"),
    "from_bnnp": ("bnnp_jax.inference.model", "from_bnnp"),
    "numpyro_model": ("bnnp_jax.inference.model", "numpyro_model"),
    "BASELINES": ("bnnp_jax.inference.registry", "METHODS"),
    "baseline_fit": ("bnnp_jax.inference.registry", "fit"),
    "baseline_predict": ("bnnp_jax.inference.registry", "predict"),
    "baseline_elbo": ("bnnp_jax.inference.registry", "elbo"),
    "load_config": ("bnnp_jax.training.config", "load"),
    "train": ("bnnp_jax.training.loop", "fit"),
    "load_run": ("bnnp_jax.training.loop", "load_run"),
}

__all__ = list(_FRONT_DOOR)


def __getattr__(name: str):
    if name in _FRONT_DOOR:
        module, attr = _FRONT_DOOR[name]
        value = getattr(_importlib.import_module(module), attr)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'bnnp_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
