"""bnnp_jax: Bayesian neural network processes with meta-learned priors and amortised inference."""

from bnnp_jax.gaussian import Gaussian, kl_divergence

__all__ = ["Gaussian", "kl_divergence"]
__version__ = "0.1.0"
