"""MetaPrior's unit codes (SPEC section 13): the variational posterior ``Q(Z)`` over every
unit's code, its draws and its KL to the prior ``p(Z) = N(0, I)`` (or to another ``Q``).

Code variants (paper sec. 5.3; :mod:`bnnp_jax.metaprior.model`): ``latent`` codes are
diagonal Gaussians; ``point`` codes are learned point estimates (``CodeQ.log_std`` is
``None``); ``one_hot`` codes are fixed unit indices (:func:`one_hot_codes`).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnnp_jax.core.draws import split_normal
from bnnp_jax.core.gaussian import diag_normal_kl

__all__ = ["CodeQ", "Codes", "ZSample", "code_kl", "sample_codes", "mean_codes", "one_hot_codes"]

Array = jax.Array


class CodeQ(NamedTuple):
    """Diagonal Gaussian over a block of codes: ``mean, log_std [U, K]`` (or ``[G]``).
    ``log_std`` is ``None`` for point-estimated codes (``codes='point'``)."""

    mean: Array
    log_std: Array | None


class Codes(NamedTuple):
    """``Q(Z)``: one :class:`CodeQ` per layer ``0..L`` (``[D_l, K]``) and the global one ``[G]``
    (the point estimates, for ``codes='point'``)."""

    units: tuple[CodeQ, ...]
    glob: CodeQ


class ZSample(NamedTuple):
    """One draw (or the mean) of all codes: ``units[l] [D_l, K]``, ``glob [G]``; for
    ``codes='one_hot'``, ``units[l]`` holds the unit indices ``[D_l]`` (int32) and ``glob [0]``."""

    units: tuple[Array, ...]
    glob: Array


def _point_estimates(codes: Codes) -> bool:
    """True for point-estimated codes (``codes='point'``: no ``log_std`` anywhere)."""
    return any(q.log_std is None for q in list(codes.units) + [codes.glob])


def code_kl(codes: Codes, prior: Codes | None = None) -> Array:
    """Closed-form ``KL(Q(Z) || p(Z))`` summed over all codes (scalar). With ``prior=None``,
    ``p = N(0, I)``: ``0.5 * sum(sigma^2 + mu^2 - 1 - 2 log sigma)``; otherwise ``p`` is another
    diagonal Gaussian (e.g. the trained ``Q(Z)`` as the prior of a new task):
    ``0.5 * sum((sigma^2 + (mu - m)^2) / s^2 - 1 + 2 log(s / sigma))``.
    Point-estimated codes (``log_std`` None) have no KL: ValueError."""
    if codes is None or _point_estimates(codes):
        raise ValueError("codes must be a Q(Z) with log_std (codes='latent'); point and one-hot codes have no KL")

    def kl(q: CodeQ, p: CodeQ | None) -> Array:
        if p is None:
            return jnp.sum(diag_normal_kl(q.mean, jnp.exp(q.log_std), 0.0, 1.0))
        return jnp.sum(diag_normal_kl(q.mean, jnp.exp(q.log_std), p.mean, jnp.exp(p.log_std)))
    priors = [None] * (len(codes.units) + 1) if prior is None else list(prior.units) + [prior.glob]
    return sum(kl(q, p) for q, p in zip(list(codes.units) + [codes.glob], priors))


def sample_codes(key: Array, codes: Codes, sample_shape: tuple = ()) -> ZSample:
    """Reparameterised draws ``z = mu + sigma * eps`` of every code, with leading ``sample_shape``
    (``codes='latent'``; :func:`draw_codes` serves every variant)."""
    if _point_estimates(codes):
        raise ValueError("codes are point estimates (log_std is None): nothing to sample; use draw_codes")
    qs = list(codes.units) + [codes.glob]
    eps = split_normal(key, [q.mean.shape for q in qs], sample_shape, codes.glob.mean.dtype)
    z = [q.mean + jnp.exp(q.log_std) * e for q, e in zip(qs, eps)]
    return ZSample(tuple(z[:-1]), z[-1])


def mean_codes(codes: Codes) -> ZSample:
    """The means of ``Q(Z)`` (or the point estimates): ``units[l] [D_l, K]``, ``glob [G]``."""
    return ZSample(tuple(q.mean for q in codes.units), codes.glob.mean)


def one_hot_codes(config, dtype=jnp.float32) -> ZSample:
    """The fixed codes of ``codes='one_hot'`` (``config``: a :class:`~bnnp_jax.metaprior.model.MetaPriorConfig`) as unit indices: ``units[l] = o_l + arange(D_l)``
    (int32, ``o_l = D_0 + ... + D_{l-1}``), ``glob`` empty ``[0]`` of ``dtype``."""
    offsets = itertools.accumulate((0,) + config.widths[:-1])
    return ZSample(tuple(jnp.arange(o, o + w, dtype=jnp.int32) for o, w in zip(offsets, config.widths)),
                   jnp.zeros((0,), dtype))
