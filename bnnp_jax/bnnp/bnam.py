"""BNAM: a Bayesian neural attention model built from amortised linear layers (SPEC section 7).

The decoder is a small pre-LayerNorm transformer whose every weight matrix is
an amortised linear layer (SPEC section 4): the input embedding, the query,
key, value and output projections of each attention block, the two layers of
each feed-forward block and the output head. As in the BNNP, each layer's
inference network maps a context point ``(x_n, y_n)`` to pseudo-observations,
the layer's conditional posterior ``q(W_l | W_{<l}, D_c)`` is closed-form
Bayesian linear regression on the *context tokens'* features at that layer,
and ``S`` sample paths flow layer by layer. The last layer's pseudo-targets are
the true ``y``. LayerNorm is deterministic and parameter-free; blocks are
residual. Multi-head self-attention runs within the context set and, separately,
within the target set: context tokens attend only to context tokens and target
tokens only to target tokens.

**BNAM is not a consistent stochastic process.** Because target tokens attend to
each other, the prediction at an input depends on which other target inputs are
queried with it: the predictive for a set of inputs is in general not the
marginal of the predictive for a larger set, and it changes with the target
set's size. (Its context-side posterior is still a proper hierarchical
Gaussian posterior over weights, so the KL term of the objectives is exact.)

Cost: q, k and v of a block share their features, so their three posteriors are
stacked along the unit axis and factorised in one LAPACK call per path (units
are independent under the per-unit priors, so this is exactly three layers).
Attention scores are ``[N, N]`` per head; padded tokens attend nowhere useful
and are removed from every posterior (zero weight) and every likelihood.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from bnnp_jax.bnnp import amortised_layer
from bnnp_jax.core import blr
from bnnp_jax.priors import weight_prior as priors
from bnnp_jax.bnnp.model import Prediction
from bnnp_jax.bnnp.params import FINAL_LAYER_MODES, raw_sigma, sigma_from_raw
from bnnp_jax.core.gaussian import Gaussian, normal_log_prob
from bnnp_jax.core.linalg import after
from bnnp_jax.core.networks import ACTIVATIONS, activation_fn, with_bias
from bnnp_jax.bnnp.objectives import TaskTerms

__all__ = ["LN_EPS", "BNAMConfig", "BNAMParams", "PathTrace", "init", "sigma_y", "layer_priors",
           "prior_factors", "pseudo_observations", "sample_path", "set_labels", "task_paths", "task_terms",
           "batch_terms", "predict"]

Array = jax.Array
LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class BNAMConfig:
    """Static architecture of a BNAM (the ``bnam:`` section of a run config).

    Attributes:
      x_dim, y_dim: input and output sizes.
      d_model: token width; num_heads: attention heads (must divide ``d_model``).
      num_blocks: residual attention + feed-forward blocks.
      ffn_width: hidden width of each feed-forward block.
      activation: nonlinearity between the two feed-forward layers.
      prior_kind, inference_hidden, lora_rank, final_layer, sigma_y_init,
      sigma_y_bound, dtype: as in :class:`bnnp_jax.bnnp.model.BNNPConfig`.
    """

    x_dim: int = 1
    y_dim: int = 1
    d_model: int = 32
    num_heads: int = 4
    num_blocks: int = 2
    ffn_width: int = 64
    activation: str = "relu"
    prior_kind: str = "unitwise"
    inference_hidden: tuple[int, ...] = (64, 64)
    lora_rank: int = 0
    final_layer: str = "learned"
    sigma_y_init: float = 0.1
    sigma_y_bound: float | None = None
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "inference_hidden", tuple(int(h) for h in self.inference_hidden))

        def bad(name, problem):
            raise ValueError(f"BNAMConfig.{name}: {problem}")

        for name in ("x_dim", "y_dim", "d_model", "num_heads", "ffn_width"):
            if int(getattr(self, name)) < 1:
                bad(name, f"must be a positive integer, got {getattr(self, name)!r}")
        if self.num_blocks < 0:
            bad("num_blocks", f"must be >= 0, got {self.num_blocks}")
        if self.d_model % self.num_heads:
            bad("num_heads", f"must divide d_model={self.d_model}, got {self.num_heads}")
        if self.activation not in ACTIVATIONS:
            bad("activation", f"must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.prior_kind not in priors.PRIOR_KINDS:
            bad("prior_kind", f"must be one of {priors.PRIOR_KINDS}, got {self.prior_kind!r}")
        if not self.inference_hidden or min(self.inference_hidden) < 1:
            bad("inference_hidden", f"needs at least one positive width, got {self.inference_hidden}")
        if self.lora_rank < 0:
            bad("lora_rank", f"must be >= 0, got {self.lora_rank}")
        if self.final_layer not in FINAL_LAYER_MODES:
            bad("final_layer", f"must be one of {FINAL_LAYER_MODES}, got {self.final_layer!r}")
        if not self.sigma_y_init > 0:
            bad("sigma_y_init", f"must be > 0, got {self.sigma_y_init}")
        if self.sigma_y_bound is not None and not self.sigma_y_bound > self.sigma_y_init:
            bad("sigma_y_bound", f"must exceed sigma_y_init={self.sigma_y_init}, got {self.sigma_y_bound}")
        if self.dtype not in ("float32", "float64"):
            bad("dtype", f"must be 'float32' or 'float64', got {self.dtype!r}")

    @property
    def layers(self) -> tuple[tuple[str, int, int], ...]:
        """``(name, D_in, D_out)`` of every amortised layer, in network order."""
        d, out = self.d_model, [("embed", self.x_dim, self.d_model)]
        for b in range(self.num_blocks):
            out += [(f"block{b}.{n}", d, d) for n in ("q", "k", "v", "o")]
            out += [(f"block{b}.ff1", d, self.ffn_width), (f"block{b}.ff2", self.ffn_width, d)]
        return tuple(out + [("head", d, self.y_dim)])

    @property
    def specs(self) -> list[amortised_layer.LayerSpec]:
        exact = self.final_layer == "exact"
        last = len(self.layers) - 1
        return [amortised_layer.LayerSpec(self.x_dim + self.y_dim,
                                          (0 if exact else o) if l == last else 2 * o, o, l == last)
                for l, (_, _, o) in enumerate(self.layers)]


@flax.struct.dataclass
class BNAMParams:
    """``prior`` (list of PriorParams, one per amortised layer), ``inference``,
    ``likelihood`` (``{"raw_sigma": [y_dim]}``); ``config`` is static."""

    prior: list
    inference: Any
    likelihood: dict
    config: BNAMConfig = flax.struct.field(pytree_node=False)


class PathTrace(NamedTuple):
    """One sample path on one task: ``f [N, y_dim]`` outputs, ``kl [L]`` per amortised
    layer (``sum_d KL``), ``features`` list over layers of ``Phi_l [N, D_in+1]``."""

    f: Array
    kl: Array
    features: list


def init(key: Array, config: BNAMConfig) -> BNAMParams:
    """Priors ``N(0, I/(D_in+1))``, fresh inference networks, ``sigma_y = sigma_y_init``."""
    dtype = jnp.dtype(config.dtype)
    if dtype == jnp.float64 and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise ValueError("BNAMConfig.dtype='float64' needs jax.config.update('jax_enable_x64', True) first")
    raw = raw_sigma(config.sigma_y_init, config.sigma_y_bound or None)
    return BNAMParams(
        prior=[priors.init_layer(i, o, config.prior_kind, dtype) for _, i, o in config.layers],
        inference=amortised_layer.init(key, config.specs, config.inference_hidden, config.lora_rank, dtype),
        likelihood={"raw_sigma": jnp.full((config.y_dim,), raw, dtype)},
        config=config,
    )


def sigma_y(params: BNAMParams) -> Array:
    """Observation noise standard deviation ``[y_dim]``."""
    return sigma_from_raw(params.likelihood["raw_sigma"], params.config.sigma_y_bound)


def layer_priors(params: BNAMParams) -> list[Gaussian]:
    """Every amortised layer's prior as a precision-form Gaussian."""
    return [priors.to_gaussian(p, params.config.prior_kind) for p in params.prior]


def prior_factors(params: BNAMParams) -> list:
    """All layers' prior factors (:func:`priors.layer_factors`), broadcast to one per unit.
    Both factor types are ``(mean [O, D], factor [O|1, D, D])``, so the type is kept as is."""
    def per_unit(f):
        mean, factor = f
        return type(f)(mean, jnp.broadcast_to(factor, mean.shape + factor.shape[-1:]))

    return [per_unit(f) for f in priors.layer_factors(params.prior, params.config.prior_kind)]


def pseudo_observations(params: BNAMParams, x: Array, y: Array) -> list[tuple[Array, Array]]:
    """``(yhat [N, D_out], lambda [N, D_out])`` of every layer from the inference networks."""
    c = params.config
    final = 1.0 / sigma_y(params) ** 2 if c.final_layer == "exact" else None
    return [amortised_layer.pseudo_observations(params.inference, l, s, c.inference_hidden, x, y, None, final)
            for l, s in enumerate(c.specs)]


def _layer_norm(h: Array) -> Array:
    """Deterministic LayerNorm over the token width (no learned affine)."""
    mu = jnp.mean(h, -1, keepdims=True)
    return (h - mu) * jax.lax.rsqrt(jnp.var(h, -1, keepdims=True) + LN_EPS)


def _attention(q: Array, k: Array, v: Array, allowed: Array, num_heads: int) -> Array:
    """Masked multi-head dot-product attention: ``[N, d]`` each, ``allowed [N, N]`` -> ``[N, d]``."""
    n, d = q.shape
    split = lambda a: a.reshape(n, num_heads, d // num_heads)
    scores = jnp.einsum("nhk,mhk->hnm", split(q), split(k)) / math.sqrt(d // num_heads)
    # A finite fill keeps padded queries (no allowed key) finite; they are weighted out everywhere.
    weights = jax.nn.softmax(jnp.where(allowed[None], scores, -1e30), axis=-1)
    return jnp.einsum("hnm,mhk->nhk", weights, split(v)).reshape(n, d)


def _sample_layers(key, factors: list, pseudo: list, phi: Array, ctx_w: Array) -> tuple[list, list]:
    """Posterior draws ``w [D_in+1, D_out]`` and ``sum_d KL`` of layers sharing the features
    ``phi [N, D]``, stacked along the unit axis into one factorisation."""
    stats = [blr.natural_stats(phi, yhat, lam * ctx_w[:, None]) for yhat, lam in pseudo]
    stacked = blr.NaturalStats(*(jnp.concatenate(s) for s in zip(*stats)))
    prior = type(factors[0])(*(jnp.concatenate(p) for p in zip(*factors)))
    w, kl_units = blr.sample_posterior(key, prior, stacked)
    sizes = [f.mean.shape[0] for f in factors]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    ws = [w[s : s + o].T for s, o in zip(starts, sizes)]
    kls = [jnp.sum(kl_units[s : s + o]) for s, o in zip(starts, sizes)]
    return ws, kls


class _Path:
    """Bookkeeping for one sample path: consumes layers in order, records KL and features."""

    def __init__(self, key, factors, pseudo, ctx_w):
        self.keys, self.factors, self.pseudo, self.ctx_w = key, factors, pseudo, ctx_w
        self.next, self.kl, self.features = 0, [], []

    def apply(self, h: Array, count: int = 1) -> list[Array]:
        """Sample the next ``count`` layers (all fed ``h [N, D_in]``) and apply them."""
        phi = with_bias(h)
        sl = slice(self.next, self.next + count)
        if self.next == 0:
            # Order the prior's LAPACK call before the paths' (see bnnp.sample_path).
            phi = after(phi, self.factors)
        ws, kls = _sample_layers(jax.random.fold_in(self.keys, self.next), self.factors[sl], self.pseudo[sl],
                                 phi, self.ctx_w)
        self.next += count
        self.kl += kls
        self.features += [phi] * count
        return [phi @ w for w in ws]


def sample_path(key, params: BNAMParams, x: Array, pseudo: list, ctx_w: Array, groups: Array,
                factors: list | None = None) -> PathTrace:
    """One path through the network on one padded task.

    Args:
      x: ``[N, x_dim]``; pseudo: :func:`pseudo_observations`' per-layer pseudo-observations.
      ctx_w: ``[N]`` context weights (the points that condition every layer).
      groups: ``[N]`` integer set labels; tokens attend to tokens of the same
        non-zero label (1 = context, 2 = targets, 0 = padding).
    """
    c = params.config
    path = _Path(key, prior_factors(params) if factors is None else factors, pseudo, ctx_w)
    allowed = (groups[:, None] == groups[None, :]) & (groups[None, :] > 0)
    (h,) = path.apply(x)
    for _ in range(c.num_blocks):
        q, k, v = path.apply(_layer_norm(h), 3)
        (o,) = path.apply(_attention(q, k, v, allowed, c.num_heads))
        h = h + o
        (a,) = path.apply(_layer_norm(h))
        (ff,) = path.apply(activation_fn(c.activation)(a))
        h = h + ff
    (f,) = path.apply(_layer_norm(h))
    return PathTrace(f, jnp.stack(path.kl), path.features)


def set_labels(context: Array, target: Array) -> Array:
    """Attention set of every token ``[N]``: 1 = context, 2 = target, 0 = padding."""
    return jnp.where(context > 0, 1, jnp.where(target > 0, 2, 0))


def _cast(params, *arrays):
    return [jnp.asarray(a, jnp.dtype(params.config.dtype)) for a in arrays]


def task_paths(key, params: BNAMParams, x, y, context, target, num_samples: int) -> tuple[Array, Array]:
    """``f [S, N, y_dim]`` and the KL ``[S]`` (summed over every amortised layer) on one task."""
    x, y, context, target = _cast(params, x, y, context, target)
    pseudo, factors = pseudo_observations(params, x, y), prior_factors(params)
    one = lambda k: sample_path(k, params, x, pseudo, context, set_labels(context, target), factors)
    trace = jax.vmap(one)(jax.random.split(key, num_samples))
    return trace.f, jnp.sum(trace.kl, -1)


def task_terms(key, params: BNAMParams, x, y, context, target, num_samples: int) -> TaskTerms:
    """``ctxt_ell``, ``trgt_ppl`` and ``KL`` of one padded task (SPEC section 5)."""
    f, kl = task_paths(key, params, x, y, context, target, num_samples)
    sig = sigma_y(params)
    (y,) = _cast(params, y)
    ll = jnp.sum(normal_log_prob(y, f, sig), -1)  # [S, N]
    ctxt_ell = jnp.mean(ll @ context.astype(ll.dtype))
    trgt_ppl = jax.nn.logsumexp(ll @ target.astype(ll.dtype)) - math.log(num_samples)
    return TaskTerms(ctxt_ell, trgt_ppl, jnp.mean(kl))


def batch_terms(key, params: BNAMParams, batch, num_samples: int) -> TaskTerms:
    """:func:`task_terms` vmapped over a padded :class:`~bnnp_jax.data.tasks.TaskBatch`: each ``[T]``."""
    keys = jax.random.split(key, batch.x.shape[0])
    fn = lambda k, x, y, c, t: task_terms(k, params, x, y, c, t, num_samples)
    return jax.vmap(fn)(keys, batch.x, batch.y, batch.context, batch.target)


def _predict(key, params: BNAMParams, x_c, y_c, x_t, num_samples: int) -> Prediction:
    """Predictive at the target *set* ``x_t [N_t, x_dim]`` (which it depends on jointly)."""
    n_c = x_c.shape[0]
    x = jnp.concatenate([x_c, x_t])
    y = jnp.concatenate([y_c, jnp.zeros((x_t.shape[0], y_c.shape[1]), y_c.dtype)])
    context = (jnp.arange(x.shape[0]) < n_c).astype(y.dtype)
    f, _ = task_paths(key, params, x, y, context, 1.0 - context, num_samples)
    f = f[:, n_c:]
    return Prediction(f, jnp.mean(f, 0), jnp.var(f, 0) + sigma_y(params) ** 2)


predict = jax.jit(_predict, static_argnames=("num_samples",))
