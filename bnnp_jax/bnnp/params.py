"""A BNNP's static configuration and its parameter pytree (SPEC sections 3 and 4).

:class:`BNNPParams` holds the prior (per-layer :class:`~bnnp_jax.priors.weight_prior.PriorParams`,
or for ``prior_kind="metaprior"`` the unit codes and hypernetwork of
:mod:`bnnp_jax.priors.metaprior_prior`, SPEC section 13), the inference networks and the likelihood, with the
:class:`BNNPConfig` as static aux-data, so functions of the params need no separate config
argument and ``jax.jit`` specialises on it. :func:`init` builds it; :func:`sigma_y` reads the
observation noise through its (optionally bounded) parameterisation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from bnnp_jax.bnnp import amortised_layer
from bnnp_jax.core.networks import ACTIVATIONS
from bnnp_jax.priors import metaprior_prior
from bnnp_jax.priors import weight_prior as priors

__all__ = ["PRIOR_KINDS", "METAPRIOR_DEFAULTS", "FINAL_LAYER_MODES", "PSEUDO_PRECISIONS", "LAYER_FORMS", "BNNPConfig", "BNNPParams", "init",
           "raw_sigma", "sigma_from_raw", "sigma_y"]

Array = jax.Array
FINAL_LAYER_MODES = ("learned", "exact")
PSEUDO_PRECISIONS = ("per_unit", "per_point")
LAYER_FORMS = ("auto", "primal", "dual")
PRIOR_KINDS = (*priors.PRIOR_KINDS, "metaprior")
# The generated prior's settings when a metaprior config leaves them out.
METAPRIOR_DEFAULTS = {"prior_code_dim": 4, "prior_hypernet_hidden": (32,), "prior_rank": 2}


@dataclasses.dataclass(frozen=True)
class BNNPConfig:
    """Static architecture of a BNNP.

    Attributes:
      x_dim, y_dim: input and output sizes.
      hidden: BNN hidden widths, e.g. ``(64, 64)``.
      activation: BNN nonlinearity (applied at the input of layers 2..L).
      prior_kind: ``unitwise`` | ``diagonal`` | ``shared`` (:mod:`bnnp_jax.priors.weight_prior`) or
        ``metaprior``: unit codes and one hypernetwork generate each unit's prior mean and
        low-rank-plus-diagonal covariance (:mod:`bnnp_jax.priors.metaprior_prior`).
      prior_code_dim, prior_hypernet_hidden, prior_rank: the ``metaprior`` prior's code size
        ``K``, hypernetwork hidden widths and covariance rank ``r`` (defaults
        :data:`METAPRIOR_DEFAULTS`); they must be left out (``None``) for the other kinds.
      inference_hidden: inference-network hidden widths (default: twice the BNN's).
      inference_sees_activations: feed layer inputs ``act(a_{l-1})`` to ``g_l``.
      lora_rank: 0 for independent inference networks, ``r > 0`` for a shared
        trunk with rank-``r`` adapters per layer.
      final_layer: ``learned`` (``g_L`` emits ``log s``) or ``exact`` (use ``sigma_y``).
      sigma_y_init: initial observation noise.
      hinge_range: ``(low, high)`` to start the first layer's prior mean with ReLU
        hinges spread over that input range (:func:`priors.spread_hinges`); ``None``
        keeps the zero mean.
      sigma_y_bound: if set, ``sigma_y = bound * sigmoid(raw)``; else ``exp(raw)``.
      prior_min_std: floor on the prior's standard deviation in every direction
        (covariance ``L L^T + prior_min_std^2 I``, :func:`priors.scale_tril`); 0 is off.
      dtype: ``float32`` or ``float64`` (the latter needs ``jax_enable_x64``).
      pseudo_precision: ``per_unit`` (``g_l`` emits ``log s_{n,d}`` for every unit, the
        paper's layer) or ``per_point`` (one ``log s_n`` per point shared by the units of
        a hidden layer; with ``prior_kind="shared"`` every layer then factorises one
        ``[D, D]`` matrix per path instead of ``D_l`` of them: SPEC section 9).
      layer_form: how each layer's posterior is computed: ``primal`` (the ``D x D``
        precision, :func:`blr.sample_posterior`), ``dual`` (the ``N x N`` form,
        :func:`blr_dual.sample_posterior_dual`) or ``auto``: dual when the context holds
        fewer points than the layer has inputs (``N < D_{l-1} + 1``) and the layer is
        neither minibatched nor the shared fast path. Same posterior and KL either way.
    """

    x_dim: int = 1
    y_dim: int = 1
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    prior_kind: str = "unitwise"
    inference_hidden: tuple[int, ...] | None = None
    inference_sees_activations: bool = False
    lora_rank: int = 0
    final_layer: str = "learned"
    sigma_y_init: float = 0.1
    hinge_range: tuple[float, float] | None = None
    sigma_y_bound: float | None = None
    prior_min_std: float = 0.0
    dtype: str = "float32"
    pseudo_precision: str = "per_unit"
    layer_form: str = "auto"
    prior_code_dim: int | None = None
    prior_hypernet_hidden: tuple[int, ...] | None = None
    prior_rank: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.inference_hidden is not None:
            object.__setattr__(self, "inference_hidden", tuple(int(h) for h in self.inference_hidden))
        if self.hinge_range is not None:
            object.__setattr__(self, "hinge_range", tuple(float(v) for v in self.hinge_range))
        if self.prior_hypernet_hidden is not None:
            object.__setattr__(self, "prior_hypernet_hidden", tuple(int(h) for h in self.prior_hypernet_hidden))
        if self.prior_kind == "metaprior":
            for name, default in METAPRIOR_DEFAULTS.items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, default)
        _validate_config(self)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.x_dim, *self.hidden, self.y_dim)

    @property
    def net_hidden(self) -> tuple[int, ...]:
        if self.inference_hidden is not None:
            return self.inference_hidden
        return tuple(2 * h for h in self.hidden) or (2 * max(self.x_dim, self.y_dim, 16),)

    @property
    def specs(self) -> list[amortised_layer.LayerSpec]:
        return amortised_layer.layer_specs(self.widths, self.inference_sees_activations, self.final_layer == "exact",
                                           per_point=self.pseudo_precision == "per_point")


def _validate_config(c: BNNPConfig) -> None:
    def bad(name, problem):
        raise ValueError(f"BNNPConfig.{name}: {problem}")

    for name in ("x_dim", "y_dim"):
        if int(getattr(c, name)) < 1:
            bad(name, f"must be a positive integer, got {getattr(c, name)!r}")
    if any(h < 1 for h in c.hidden):
        bad("hidden", f"widths must be positive, got {c.hidden}")
    if c.activation not in ACTIVATIONS:
        bad("activation", f"must be one of {sorted(ACTIVATIONS)}, got {c.activation!r}")
    if c.prior_kind not in PRIOR_KINDS:
        bad("prior_kind", f"must be one of {PRIOR_KINDS}, got {c.prior_kind!r}")
    _validate_metaprior(c, bad)
    if c.final_layer not in FINAL_LAYER_MODES:
        bad("final_layer", f"must be one of {FINAL_LAYER_MODES}, got {c.final_layer!r}")
    if c.lora_rank < 0:
        bad("lora_rank", f"must be >= 0, got {c.lora_rank}")
    if c.lora_rank > 0 and c.inference_sees_activations:
        bad("lora_rank", "the shared LoRA trunk needs one input size; it cannot be combined with inference_sees_activations")
    if not 0 < c.sigma_y_init < math.inf:  # NaN fails every comparison
        bad("sigma_y_init", f"must be > 0 and finite, got {c.sigma_y_init}")
    if c.sigma_y_bound is not None and not c.sigma_y_bound > c.sigma_y_init:
        bad("sigma_y_bound", f"must exceed sigma_y_init={c.sigma_y_init}, got {c.sigma_y_bound}")
    if c.hinge_range is not None and not (len(c.hinge_range) == 2 and math.isfinite(c.hinge_range[0])
                                          and math.isfinite(c.hinge_range[1]) and c.hinge_range[0] < c.hinge_range[1]):
        bad("hinge_range", f"must be [low, high] with finite low < high, got {list(c.hinge_range)}")
    if not 0 <= c.prior_min_std < math.inf:
        bad("prior_min_std", f"must be >= 0 and finite, got {c.prior_min_std}")
    if c.pseudo_precision not in PSEUDO_PRECISIONS:
        bad("pseudo_precision", f"must be one of {PSEUDO_PRECISIONS}, got {c.pseudo_precision!r}")
    if c.layer_form not in LAYER_FORMS:
        bad("layer_form", f"must be one of {LAYER_FORMS}, got {c.layer_form!r}")
    if c.dtype not in ("float32", "float64"):
        bad("dtype", f"must be 'float32' or 'float64', got {c.dtype!r}")


def _validate_metaprior(c: BNNPConfig, bad) -> None:
    if c.prior_kind != "metaprior":
        for name in METAPRIOR_DEFAULTS:
            if getattr(c, name) is not None:
                bad(name, f"applies only to prior_kind 'metaprior' (got prior_kind {c.prior_kind!r}); leave it out")
        return
    for name in ("prior_code_dim", "prior_rank"):
        if int(getattr(c, name)) < 1:
            bad(name, f"must be a positive integer, got {getattr(c, name)!r}")
    if not c.prior_hypernet_hidden or min(c.prior_hypernet_hidden) < 1:
        bad("prior_hypernet_hidden", f"must list >= 1 positive widths, got {list(c.prior_hypernet_hidden)}")
    if c.hinge_range is not None:  # spread_hinges sets per-weight means, which this prior generates
        bad("hinge_range", "does not apply to prior_kind 'metaprior' (its means come from the hypernetwork); "
            "leave it out")


@flax.struct.dataclass
class BNNPParams:
    """Trainable parameters: ``prior`` (list of PriorParams; a MetaPriorPriorParams for
    ``prior_kind="metaprior"``), ``inference``
    (inference networks), ``likelihood`` (``{"raw_sigma": [y_dim]}``); ``config`` is static."""

    prior: list
    inference: Any
    likelihood: dict
    config: BNNPConfig = flax.struct.field(pytree_node=False)


def init(key: Array, config: BNNPConfig) -> BNNPParams:
    """Prior at ``N(0, I/(D_in+1))`` (first-layer mean per ``hinge_range``; a ``metaprior``
    prior near it, :func:`bnnp_jax.priors.metaprior_prior.init`), fresh
    inference networks, ``sigma_y = sigma_y_init``."""
    dtype = jnp.dtype(config.dtype)
    if dtype == jnp.float64 and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise ValueError("BNNPConfig.dtype='float64' needs jax.config.update('jax_enable_x64', True) first")
    raw = raw_sigma(config.sigma_y_init, config.sigma_y_bound)
    inference = amortised_layer.init(key, config.specs, config.net_hidden, config.lora_rank, dtype)
    if config.prior_kind == "metaprior":
        prior = metaprior_prior.init(jax.random.fold_in(key, 2), config.widths, config.prior_code_dim,
                                     config.prior_hypernet_hidden, config.prior_rank, dtype=dtype)
    else:
        prior = priors.init(config.widths, config.prior_kind, dtype)
    if config.hinge_range is not None:
        prior[0] = priors.spread_hinges(jax.random.fold_in(key, 1), prior[0], *config.hinge_range)
    return BNNPParams(
        prior=prior,
        inference=inference,
        likelihood={"raw_sigma": jnp.full((config.y_dim,), raw, dtype)},
        config=config,
    )


def raw_sigma(sigma: float, bound: float | None) -> float:
    """The unconstrained parameter of the observation noise ``sigma`` (inverse of
    :func:`sigma_from_raw`): ``log sigma``, or ``logit(sigma / bound)`` when bounded."""
    if bound is None:
        return math.log(sigma)
    r = sigma / bound
    return math.log(r / (1 - r))


def sigma_from_raw(raw: Array, bound: float | None) -> Array:
    """``sigma_y = exp(raw)``, or ``bound * sigmoid(raw)`` (a ceiling keeps a badly fitted
    likelihood from explaining everything as noise). The BNNP's and BNAM's parameterisation."""
    return jnp.exp(raw) if bound is None else bound * jax.nn.sigmoid(raw)


def sigma_y(params: BNNPParams) -> Array:
    """Observation noise standard deviation ``[y_dim]``."""
    return sigma_from_raw(params.likelihood["raw_sigma"], params.config.sigma_y_bound)
