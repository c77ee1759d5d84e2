"""Batches of per-unit Gaussians over incoming weights, held in Cholesky form.

A layer with ``O`` output units and ``D = D_in + 1`` incoming weights per unit
(bias last) has one Gaussian per unit: ``mean [..., O, D]``.  We store the
*lower Cholesky factor of the precision*, ``prec_tril [..., O, D, D]`` with
``P = C C^T``, because that is what the closed-form Bayesian linear regression
produces (SPEC section 4): posteriors never need an inverse, and sampling is
``w = m + C^{-T} eps`` by one triangular solve.

Leading batch dimensions (samples, tasks) broadcast through every function.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnnp_jax.core.linalg import log_diag, solve_lower

__all__ = ["LOG_2PI", "normal_log_prob", "diag_normal_kl", "Gaussian", "kl_divergence"]

Array = jax.Array
LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(y: Array, mean: Array, std: Array) -> Array:
    """Elementwise ``log N(y | mean, std^2)`` (broadcasting; sum over the axes you need).
    Every Gaussian likelihood in the package is this density."""
    return -0.5 * ((y - mean) / std) ** 2 - jnp.log(std) - 0.5 * LOG_2PI


def diag_normal_kl(mu_q: Array, sd_q: Array, mu_p: Array, sd_p: Array) -> Array:
    """Elementwise ``KL(N(mu_q, sd_q^2) || N(mu_p, sd_p^2))`` (broadcasting): the KL of
    factorised Gaussians is its sum."""
    return jnp.log(sd_p / sd_q) + 0.5 * (sd_q**2 + (mu_q - mu_p) ** 2) / sd_p**2 - 0.5


class Gaussian(NamedTuple):
    """Per-unit Gaussians ``N(mean, (C C^T)^{-1})``.

    Attributes:
      mean: ``[..., O, D]``.
      prec_tril: ``[..., O, D, D]`` lower Cholesky factor ``C`` of the precision
        (positive diagonal). Batch dims may broadcast against ``mean``'s.
    """

    mean: Array
    prec_tril: Array

    # ----- constructors ---------------------------------------------------
    @classmethod
    def from_precision(cls, mean: Array, precision: Array) -> "Gaussian":
        """From a precision matrix ``[..., O, D, D]`` (Cholesky-factored here)."""
        return cls(mean, jnp.linalg.cholesky(precision))

    @classmethod
    def from_scale_tril(cls, mean: Array, scale_tril: Array) -> "Gaussian":
        """From the lower Cholesky factor ``L`` of the *covariance*, ``S = L L^T``.

        The precision is ``L^{-T} L^{-1}``; we form ``U = L^{-T}`` by a
        triangular solve against the identity and re-factor ``U U^T``.
        """
        eye = jnp.broadcast_to(jnp.eye(scale_tril.shape[-1], dtype=scale_tril.dtype), scale_tril.shape)
        u = solve_lower(scale_tril, eye, trans=1)  # L^{-T}, upper-triangular
        return cls.from_precision(mean, u @ jnp.swapaxes(u, -1, -2))

    @classmethod
    def from_covariance(cls, mean: Array, cov: Array) -> "Gaussian":
        """From a covariance matrix ``[..., O, D, D]``."""
        return cls.from_scale_tril(mean, jnp.linalg.cholesky(cov))

    # ----- queries ----------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.mean.shape[-1]

    def precision(self) -> Array:
        """``C C^T`` ``[..., O, D, D]``."""
        return self.prec_tril @ jnp.swapaxes(self.prec_tril, -1, -2)

    def covariance(self) -> Array:
        """``C^{-T} C^{-1}`` ``[..., O, D, D]`` via a triangular solve (for inspection and tests)."""
        eye = jnp.broadcast_to(jnp.eye(self.dim, dtype=self.prec_tril.dtype), self.prec_tril.shape)
        cinv = solve_lower(self.prec_tril, eye)  # C^{-1}
        return jnp.swapaxes(cinv, -1, -2) @ cinv

    def sample(self, key: Array, sample_shape: tuple = ()) -> Array:
        """Draw ``w = m + C^{-T} eps``: returns ``sample_shape + [..., O, D]``.

        All draws share one triangular solve per unit (the draws are its
        right-hand-side columns) rather than one solve per draw.
        """
        batch = jnp.broadcast_shapes(self.mean.shape, self.prec_tril.shape[:-1])
        sample_shape = tuple(sample_shape)
        n = math.prod(sample_shape)
        eps = jax.random.normal(key, (n,) + batch, self.mean.dtype)
        cols = jnp.moveaxis(eps, 0, -1)  # [..., O, D, n]
        noise = jnp.moveaxis(solve_lower(self.prec_tril, cols, trans=1), -1, 0)
        return (self.mean + noise).reshape(sample_shape + batch)

    def log_prob(self, w: Array) -> Array:
        """Log density per unit: ``w [..., O, D] -> [..., O]``."""
        z = jnp.einsum("...ji,...j->...i", self.prec_tril, w - self.mean)  # C^T (w - m)
        d = self.dim
        return -0.5 * jnp.sum(z**2, -1) + log_diag(self.prec_tril) - 0.5 * d * LOG_2PI

    def entropy(self) -> Array:
        """Differential entropy per unit ``[..., O]``."""
        d = self.dim
        return 0.5 * d * (1.0 + LOG_2PI) - log_diag(self.prec_tril)


def kl_divergence(q: Gaussian, p: Gaussian) -> Array:
    """Closed-form ``KL(q || p)`` per unit, ``[..., O]``.

    With precision factors ``C_q, C_p``:
      ``tr(S_p^{-1} S_q) = ||C_q^{-1} C_p||_F^2``,
      ``(m_q - m_p)^T P_p (m_q - m_p) = ||C_p^T (m_q - m_p)||^2``,
      ``log|S_p| - log|S_q| = 2 sum log diag C_q - 2 sum log diag C_p``.
    """
    d = q.dim
    trace = jnp.sum(solve_lower(q.prec_tril, p.prec_tril) ** 2, axis=(-2, -1))
    diff = q.mean - p.mean
    maha = jnp.sum(jnp.einsum("...ji,...j->...i", p.prec_tril, diff) ** 2, -1)
    logdet = 2.0 * (log_diag(q.prec_tril) - log_diag(p.prec_tril))
    return 0.5 * (trace + maha - d + logdet)
