"""One BNN likelihood and one weight prior, shared by every inference baseline (SPEC section 8).

A :class:`BNNModel` holds the network shape, the activation, the observation
noise ``sigma_y [y_dim]`` and, per layer, a Gaussian prior over each output
unit's incoming weights (``prior_means [O, D]``, ``prior_scale_trils [O, D, D]``
with ``D = D_in + 1``, bias last, SPEC section 3). The prior is either the fixed
``N(0, I / (D_in + 1))`` (:func:`fixed_prior_model`) or a meta-learned BNNP prior
(:func:`from_bnnp`); NUTS, MFVI/FCVI/UCVI, GIVI and AIS all consume the same
object, so a comparison between methods is a comparison of inference only.

Weights come in two layouts:

- per-layer list ``weights[l] [D_{l-1}+1, D_l]`` (SPEC section 2), used by the
  forward pass;
- one flat vector ``[P]`` ordered layer by layer, unit-major (``W_l^T`` raveled),
  used by NUTS and AIS. This is also the order numpyro's autoguides use for
  :func:`numpyro_model`'s sites, so FCVI's covariance is in this order too.

With no hidden layer (``widths = [x_dim, y_dim]``) the model is Bayesian linear
regression and :func:`exact_posterior` / :func:`exact_log_evidence` give the
closed forms used to check every method.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from bnnp_jax.core import blr
from bnnp_jax.priors import weight_prior as priors
from bnnp_jax.core.gaussian import Gaussian, normal_log_prob
from bnnp_jax.core.linalg import after
from bnnp_jax.core.networks import activation_fn, forward, with_bias

__all__ = ["BNNModel", "make_model", "fixed_prior_model", "from_bnnp", "flatten", "unflatten",
           "units_to_weights", "forward", "forward_flat", "log_prior", "log_likelihood",
           "log_likelihood_from_output", "log_joint", "prior_sample", "numpyro_model", "exact_posterior",
           "exact_log_evidence", "exact_posterior_samples", "require_no_hidden_layer"]

Array = jax.Array

@partial(
    jax.tree_util.register_dataclass,
    data_fields=["sigma_y", "prior_means", "prior_scale_trils"],
    meta_fields=["widths", "activation", "shared_cov"],
)
@dataclasses.dataclass(frozen=True)
class BNNModel:
    """Likelihood and prior of a BNN regression model (a pytree; ``widths`` and
    ``activation`` are static).

    Attributes:
      widths: ``(D_0, ..., D_L)``, ``D_0 = x_dim``, ``D_L = y_dim``.
      activation: name in :data:`bnnp_jax.core.networks.ACTIVATIONS`, applied at the input of every layer after the first.
      sigma_y: ``[y_dim]`` observation noise standard deviations.
      prior_means: per layer ``[D_l, D_{l-1}+1]`` (unit-major).
      prior_scale_trils: per layer ``[D_l, D_{l-1}+1, D_{l-1}+1]`` covariance Cholesky factors.
      shared_cov: per layer, static: ``True`` where every unit's prior covariance is the same
        (:func:`make_model` given a ``[1, D, D]`` factor). A method whose layer likelihood is
        shared by the units too (GIVI) then factors one ``D x D`` posterior per layer
        instead of one per unit (SPEC section 9's fast path).
    """

    widths: tuple[int, ...]
    activation: str
    sigma_y: Array
    prior_means: tuple[Array, ...]
    prior_scale_trils: tuple[Array, ...]
    shared_cov: tuple[bool, ...] = ()

    @property
    def num_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def shared_layers(self) -> tuple[bool, ...]:
        """``shared_cov`` per layer (all ``False`` for a model built without it)."""
        return self.shared_cov or (False,) * self.num_layers

    @property
    def num_weights(self) -> int:
        return sum((a + 1) * b for a, b in zip(self.widths[:-1], self.widths[1:]))

    def waiting_for(self, deps) -> "BNNModel":
        """This model with its prior factors made to wait for ``deps``, so the factorisations
        of :meth:`prior_gaussians` join a LAPACK chain (:func:`bnnp_jax.core.linalg.after`)."""
        return dataclasses.replace(self, prior_scale_trils=after(self.prior_scale_trils, deps))

    def prior_gaussians(self) -> list[Gaussian]:
        """The layer priors in precision form, ``mean [O, D]``, ``prec_tril [O, D, D]``; each
        layer's factorisation waits for the previous one's (one LAPACK chain, :mod:`bnnp_jax.core.linalg`)."""
        out = []
        for m, s in zip(self.prior_means, self.prior_scale_trils):
            out.append(Gaussian.from_scale_tril(m, after(s, [g.prec_tril for g in out[-1:]])))
        return out


def _default_dtype():
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must be at least [x_dim, y_dim] with positive entries, got {list(widths)}")
    return widths


def make_model(widths, activation, sigma_y, prior_means, prior_scale_trils) -> BNNModel:
    """Validate shapes and build a :class:`BNNModel` (``[1, D, D]`` scale factors broadcast over
    units, and the layer marked ``shared_cov``)."""
    widths = _check_widths(widths)
    activation_fn(activation)
    sigma_y = jnp.broadcast_to(jnp.asarray(sigma_y), (widths[-1],))
    if len(prior_means) != len(widths) - 1 or len(prior_scale_trils) != len(widths) - 1:
        raise ValueError(f"prior_means and prior_scale_trils need one entry per layer ({len(widths) - 1})")
    means, trils = [], []
    for l, (m, s) in enumerate(zip(prior_means, prior_scale_trils)):
        shape = (widths[l + 1], widths[l] + 1)
        if m.shape != shape:
            raise ValueError(f"prior_means[{l}] must have shape {shape}, got {m.shape}")
        if s.shape[-2:] != shape[1:] * 2 or s.shape[0] not in (1, shape[0]):
            raise ValueError(f"prior_scale_trils[{l}] must have shape {(shape[0],) + shape[1:] * 2}, got {s.shape}")
        means.append(m)
        trils.append(jnp.broadcast_to(s, shape + shape[1:]))
    shared = tuple(s.shape[0] == 1 for s in prior_scale_trils)
    return BNNModel(widths, activation, sigma_y.astype(means[0].dtype), tuple(means), tuple(trils), shared)


def fixed_prior_model(widths: Sequence[int], activation: str = "relu", sigma_y=0.1, dtype=None) -> BNNModel:
    """The fixed prior ``N(0, I / (D_{l-1} + 1))`` on every unit (SPEC section 3 initialisation)."""
    activation_fn(activation)
    dtype = jnp.dtype(dtype or _default_dtype())
    return _fixed_prior_model(_check_widths(widths), activation, jnp.asarray(sigma_y, dtype), dtype)


@partial(jax.jit, static_argnums=(0, 1, 3))
def _fixed_prior_model(widths, activation, sigma_y, dtype):  # jitted: dozens of tiny eager ops otherwise
    layers = priors.init(widths, "shared", dtype)  # one covariance for all of a layer's units
    trils = [priors.scale_tril(p, "shared") for p in layers]  # [1, D, D]
    return make_model(widths, activation, sigma_y, [p.mean for p in layers], trils)


def from_bnnp(params) -> BNNModel:
    """The (learned) prior and ``sigma_y`` of a BNNP, as a model for the baselines."""
    from bnnp_jax.bnnp import model as bnnp  # local: bnnp sits on the same floor and imports more than we need

    cfg = params.config
    widths = (cfg.x_dim, *cfg.hidden, cfg.y_dim)
    layers = bnnp.prior_scale_trils(params)  # every prior kind, floored by prior_min_std
    return make_model(widths, cfg.activation, bnnp.sigma_y(params), [m for m, _ in layers], [t for _, t in layers])


# ----- weight layouts --------------------------------------------------------


def flatten(weights: Sequence[Array]) -> Array:
    """Per-layer ``[D_{l-1}+1, D_l]`` -> flat ``[P]``, layer by layer, unit-major."""
    return jnp.concatenate([w.T.reshape(-1) for w in weights])


def unflatten(model: BNNModel, flat: Array) -> list[Array]:
    """Flat ``[P]`` -> per-layer list ``[D_{l-1}+1, D_l]`` (vmap for batches)."""
    if flat.shape != (model.num_weights,):
        raise ValueError(f"flat weights must have shape ({model.num_weights},), got {flat.shape}")
    out, start = [], 0
    for d_in, d_out in zip(model.widths[:-1], model.widths[1:]):
        size = (d_in + 1) * d_out
        out.append(flat[start : start + size].reshape(d_out, d_in + 1).T)
        start += size
    return out


def units_to_weights(units: Sequence[Array]) -> list[Array]:
    """Unit layout ``[..., O, D]`` (the Gaussian/prior layout) -> weights ``[..., D, O]``."""
    return [jnp.swapaxes(u, -1, -2) for u in units]


# ----- densities -----------------------------------------------------------


@jax.jit
def forward_flat(model: BNNModel, flat: Array, x: Array) -> Array:
    """Function samples for flat weights ``[S, P]`` at ``x [N, D_0]`` -> ``[S, N, D_L]``."""
    return jax.vmap(lambda w: forward(unflatten(model, w), x, model.activation))(flat)


def log_prior(model: BNNModel, weights: Sequence[Array]) -> Array:
    """``sum_l sum_d log N(w_{l,d} | mu_{l,d}, L_{l,d} L_{l,d}^T)`` -> scalar."""
    total, z = 0.0, []
    for w, mean, tril in zip(weights, model.prior_means, model.prior_scale_trils):
        z = solve_triangular(tril, after(w.T - mean, z)[..., None], lower=True)[..., 0]  # [O, D], one LAPACK chain
        log_det = jnp.sum(jnp.log(jnp.diagonal(tril, axis1=-2, axis2=-1)))
        total = total - 0.5 * jnp.sum(z**2) - log_det - 0.5 * z.size * math.log(2 * math.pi)
    return total


def log_likelihood(model: BNNModel, weights: Sequence[Array], x: Array, y: Array, mask: Array | None = None) -> Array:
    """``sum_n mask_n log N(y_n | f(x_n), diag(sigma_y^2))`` for ``x [N, D_0]``, ``y [N, D_L]`` -> scalar."""
    return log_likelihood_from_output(model, forward(weights, x, model.activation), y, mask)


def log_likelihood_from_output(model: BNNModel, f: Array, y: Array, mask: Array | None = None) -> Array:
    """The same for a given network output ``f [N, D_L]`` -> scalar."""
    per_point = jnp.sum(normal_log_prob(y, f, model.sigma_y), axis=-1)
    if mask is not None:
        per_point = per_point * mask
    return jnp.sum(per_point)


def log_joint(model: BNNModel, weights: Sequence[Array], x: Array, y: Array, mask: Array | None = None) -> Array:
    """``log p(W) + log p(y | W, x)`` -> scalar."""
    return log_prior(model, weights) + log_likelihood(model, weights, x, y, mask)


@partial(jax.jit, static_argnames="sample_shape")
def prior_sample(key: Array, model: BNNModel, sample_shape: tuple = ()) -> list[Array]:
    """Weights from the prior: per layer ``sample_shape + [D_{l-1}+1, D_l]``."""
    keys = jax.random.split(key, model.num_layers)
    out = []
    for k, mean, tril in zip(keys, model.prior_means, model.prior_scale_trils):
        eps = jax.random.normal(k, tuple(sample_shape) + mean.shape, mean.dtype)
        out.append(jnp.swapaxes(mean + jnp.einsum("oij,...oj->...oi", tril, eps), -1, -2))
    return out


def numpyro_model(model: BNNModel, x: Array, y: Array | None = None, mask: Array | None = None) -> Array:
    """The BNN as a numpyro model, for use in any numpyro inference code.

    Each layer's weights are the site ``"W{l:02d}"`` of shape ``[D_l, D_{l-1}+1]``
    (one row per output unit) drawn from ``MultivariateNormal(prior_means[l],
    scale_tril=prior_scale_trils[l])``, so a learned per-unit full-covariance
    BNNP prior (:func:`from_bnnp`) is used exactly. ``y [N, D_L]`` is observed at
    the site ``"y"`` (pass ``y=None`` to simulate); ``mask [N]`` drops padded
    points. Returns the network output ``f [N, D_L]``.
    """
    import numpyro
    import numpyro.distributions as dist

    units = [
        numpyro.sample(f"W{l:02d}", dist.MultivariateNormal(m, scale_tril=s).to_event(1))
        for l, (m, s) in enumerate(zip(model.prior_means, model.prior_scale_trils))
    ]
    f = forward(units_to_weights(units), x, model.activation)
    noise = dist.Normal(f, model.sigma_y)
    if mask is not None:
        noise = noise.mask(mask.astype(bool)[:, None])
    numpyro.sample("y", noise.to_event(2), obs=y)
    return f


# ----- the exact case: no hidden layer -----------------------------------------


def require_no_hidden_layer(model: BNNModel, what: str) -> None:
    """Raise unless ``model`` is one linear layer, where ``what`` has a closed form (SPEC section 4)."""
    if model.num_layers != 1:
        raise ValueError(f"{what} needs a model with no hidden layer, got widths {list(model.widths)}")


def _linear_case(model: BNNModel, x: Array, y: Array, mask=None):
    require_no_hidden_layer(model, "the exact posterior")
    features = with_bias(x)  # [N, D]
    precision = jnp.broadcast_to(model.sigma_y**-2, y.shape)  # [N, O]
    if mask is not None:  # padding gets precision 0, which the linear-regression forms skip
        precision = precision * jnp.asarray(mask, precision.dtype)[:, None]
    return features, precision, model.prior_gaussians()[0]


@jax.jit
def exact_posterior(model: BNNModel, x: Array, y: Array, mask=None) -> Gaussian:
    """Closed-form posterior of a no-hidden-layer model (Bayesian linear regression):
    ``Gaussian(mean [O, D], prec_tril [O, D, D])`` in unit layout; ``mask [N]`` (1 real, 0 padding)."""
    features, precision, prior = _linear_case(model, x, y, mask)
    return blr.posterior(features, y, precision, prior)


@jax.jit
def exact_log_evidence(model: BNNModel, x: Array, y: Array, mask=None) -> Array:
    """Exact ``log p(y | x)`` of a no-hidden-layer model -> scalar; padded points (``mask [N]``
    0) are left out."""
    features, precision, prior = _linear_case(model, x, y, mask)
    return blr.log_marginal_likelihood(features, y, precision, prior)


def exact_posterior_samples(key: Array, model: BNNModel, x: Array, y: Array, num_samples: int,
                            mask=None) -> Array:
    """Exact posterior draws of a no-hidden-layer model as flat weights ``[S, P]``."""
    units = exact_posterior(model, x, y, mask).sample(key, (num_samples,))  # [S, O, D]
    return units.reshape(num_samples, -1)  # unit-major = the flat layout for one layer
