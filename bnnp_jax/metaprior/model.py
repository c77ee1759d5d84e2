"""MetaPrior: unit codes and a shared hypernetwork as a weight prior (SPEC section 13).

Every unit ``u`` of layer ``l = 0..L`` (inputs and outputs included) has a code
``z_{l,u} in R^K`` with ``p(z) = N(0, I)`` and ``Q(z) = N(mu, diag sigma^2)``;
an optional global code ``z_s in R^G`` has the same treatment. The weights of
layer ``l`` are drawn from ``p(W_l | Z)`` given by :class:`HyperNet` on the pair
codes ``[z_{l,i}, z_{l-1,j}, z_s]`` (biases from ``[z_{l,i}, 0]``):

- Gaussian head: ``w ~ N(mu, s^2)``, ``(mu, log s) = g(.)``;
- implicit head: ``w = g(., eps)``, ``eps ~ N(0, I_E)`` per weight.

Both are multiplied by ``1 / sqrt(D_{l-1} + 1)`` (``fan_in_scaling``, on by
default) so one ``g`` serves layers of any fan-in with the scaled initialisation
of SPEC section 3 (a design choice of this package; the paper is silent on it).

The objective is the paper's eq. 3, ``E_Q(Z) E_p(W|Z) log p(D|W) - KL(Q(Z)||p(Z))``:
``p(W|Z)`` appears in both the model and the variational family and cancels,
so no weight KL is needed and the implicit head needs no density. The Gaussian
head uses local reparameterisation (pre-activations sampled per data point);
minibatches are scaled by ``N / B``.

Networks follow SPEC section 2: ``W_l [D_{l-1}+1, D_l]``, bias row last,
``a_l = [act(a_{l-1}), 1] W_l`` with identity before the first layer.

Code variants (``MetaPriorConfig.codes``; paper sec. 5.3; the codes themselves are
:mod:`bnnp_jax.metaprior.codes`):

- ``latent`` (paper: Gaussian-LV, the default): ``Q(Z)`` as above, the ELBO above.
- ``point`` (maximum-likelihood codes): every code is a learned point estimate
  (``CodeQ.log_std`` is ``None``); no code is sampled, there is no code prior and
  no code KL, so the objective is ``E_p(W|Z) log p(D|W)`` at those codes.
- ``one_hot`` (paper: Gaussian-OH): unit ``u`` of layer ``l`` has the fixed code
  ``e_{o_l + u}``, one-hot over all ``U = sum_l D_l`` units of the network
  (``o_l = D_0 + ... + D_{l-1}``); nothing about codes is learned or sampled
  (``MetaPriorParams.codes`` is ``None``) and there is no code KL. The split
  first layer of ``g`` is then a learned embedding lookup (``HyperNet.num_units``):
  receiver ``i`` contributes row ``o_l + i`` of ``A``, sender ``j`` row
  ``o_{l-1} + j`` of ``B``. ``ZSample.units[l]`` holds the unit indices ``[D_l]``.
  No global code (a one-hot code of a single global entity is a constant, which
  ``A``'s bias already provides); ``code_dim`` and ``init_code_std`` are unused.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnnp_jax.core.gaussian import normal_log_prob
from bnnp_jax.core import networks
from bnnp_jax.core.networks import activation_fn, forward
from bnnp_jax.core.draws import split_normal
from bnnp_jax.metaprior.codes import CodeQ, Codes, ZSample, code_kl, mean_codes, one_hot_codes, sample_codes
from bnnp_jax.metaprior.hypernet import HyperNet

__all__ = ["HEADS", "LIKELIHOODS", "CODES", "MetaPriorConfig", "MetaPriorParams", "init", "point_codes",
           "draw_codes", "noise_shapes",
           "weight_moments", "weights_from_noise", "sample_weights", "lrt_forward", "sigma_y",
           "log_likelihood", "elbo", "predict", "predictive_probs"]

Array = jax.Array
HEADS = ("gaussian", "implicit")
LIKELIHOODS = ("gaussian", "categorical")
CODES = ("latent", "one_hot", "point")


@dataclasses.dataclass(frozen=True)
class MetaPriorConfig:
    """Static settings (hashable, so it can be a jit static argument).

    ``widths = (D_0, ..., D_L)``; ``sigma_y`` fixes the regression noise (None
    learns it); ``init_code_std`` is the initial std of ``Q(Z)``; ``codes`` picks the
    code variant, ``latent`` | ``one_hot`` | ``point`` (module docstring).
    """

    widths: tuple[int, ...]
    code_dim: int = 2
    global_dim: int = 0
    hyper_hidden: tuple[int, ...] = (32,)
    hyper_activation: str = "tanh"
    head: str = "gaussian"
    noise_dim: int = 4
    activation: str = "relu"
    likelihood: str = "categorical"
    sigma_y: float | None = None
    init_code_std: float = 0.1
    init_weight_log_std: float = -1.0
    fan_in_scaling: bool = True
    codes: str = "latent"

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "hyper_hidden", tuple(int(w) for w in self.hyper_hidden))
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths must list >= 2 positive layer sizes, got {self.widths}")
        if self.code_dim < 1 or self.global_dim < 0:
            raise ValueError(f"code_dim must be >= 1 and global_dim >= 0, got {self.code_dim}, {self.global_dim}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.head == "implicit" and self.noise_dim < 1:
            raise ValueError(f"noise_dim must be >= 1 for the implicit head, got {self.noise_dim}")
        if self.sigma_y is not None and self.sigma_y <= 0:
            raise ValueError(f"sigma_y must be positive or None, got {self.sigma_y}")
        if self.codes not in CODES:
            raise ValueError(f"codes must be one of {CODES}, got {self.codes!r}")
        if self.codes == "one_hot" and self.global_dim:
            raise ValueError(f"global_dim must be 0 with codes='one_hot' (a one-hot code of one global entity is "
                             f"a constant, already g's first-layer bias), got {self.global_dim}")
        activation_fn(self.activation)
        activation_fn(self.hyper_activation)

    def weight_scale(self, layer: int) -> float:
        """Multiplier of g's outputs for layer ``layer`` (1-based): ``1/sqrt(D_{l-1}+1)`` or 1."""
        return 1.0 / math.sqrt(self.widths[layer - 1] + 1) if self.fan_in_scaling else 1.0

    @property
    def num_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def num_units(self) -> int:
        """``U = D_0 + ... + D_L``, the one-hot code width of ``codes='one_hot'``."""
        return sum(self.widths)

    def hypernet(self) -> HyperNet:
        return HyperNet(hidden=self.hyper_hidden, out_features=2 if self.head == "gaussian" else 1,
                        activation=self.hyper_activation, use_global=self.global_dim > 0,
                        noise_dim=self.noise_dim if self.head == "implicit" else 0,
                        num_units=self.num_units if self.codes == "one_hot" else 0)


class MetaPriorParams(NamedTuple):
    """Everything trainable: ``codes`` (Q(Z); ``None`` for ``codes='one_hot'``), ``hyper`` (flax
    params of g), ``raw_sigma [D_L]``."""

    codes: Codes | None
    hyper: dict
    raw_sigma: Array


@partial(jax.jit, static_argnames=("config", "dtype"))
def init(key: Array, config: MetaPriorConfig, dtype=jnp.float32) -> MetaPriorParams:
    """Code means from the prior ``N(0, I)`` (distinct codes break the unit symmetry),
    code stds ``init_code_std`` (``codes='point'``: the same means, no stds; ``one_hot``:
    no codes), hypernetwork from flax's initialisers with the log-std head bias at
    ``init_weight_log_std``."""
    k_codes, k_glob, k_hyper = jax.random.split(key, 3)
    keys = jax.random.split(k_codes, len(config.widths))
    log_sd = math.log(config.init_code_std)
    point = config.codes == "point"
    units = tuple(CodeQ(jax.random.normal(k, (w, config.code_dim), dtype),
                        None if point else jnp.full((w, config.code_dim), log_sd, dtype))
                  for k, w in zip(keys, config.widths))
    glob = CodeQ(jax.random.normal(k_glob, (config.global_dim,), dtype),
                 None if point else jnp.full((config.global_dim,), log_sd, dtype))
    codes = None if config.codes == "one_hot" else Codes(units, glob)
    z = one_hot_codes(config, dtype) if codes is None else mean_codes(codes)
    noise = jnp.zeros((1, 1, config.noise_dim), dtype) if config.head == "implicit" else None
    hyper = config.hypernet().init(k_hyper, *_hyper_inputs(config, z, 1, noise))
    hyper = jax.tree.map(lambda a: a.astype(dtype), hyper)
    if config.head == "gaussian":
        bias = hyper["params"]["head"]["bias"].at[1].set(config.init_weight_log_std)
        hyper = {"params": {**hyper["params"], "head": {**hyper["params"]["head"], "bias": bias}}}
    return MetaPriorParams(codes, hyper, jnp.zeros((config.widths[-1],), dtype))


def point_codes(params: MetaPriorParams, config: MetaPriorConfig) -> ZSample:
    """The codes the network uses without sampling: ``Q(Z)``'s means (``latent``), the point
    estimates (``point``) or the unit indices (``one_hot``)."""
    if config.codes == "one_hot":
        if params.codes is not None:
            raise ValueError("params.codes must be None for codes='one_hot' (the codes are fixed)")
        return one_hot_codes(config, params.raw_sigma.dtype)
    if params.codes is None:
        raise ValueError(f"params.codes is None but config.codes={config.codes!r} needs codes")
    return mean_codes(params.codes)


def draw_codes(key: Array, params: MetaPriorParams, config: MetaPriorConfig, sample_shape: tuple = ()) -> ZSample:
    """Codes for ``sample_shape`` forward passes: reparameterised draws from ``Q(Z)`` (``latent``),
    or :func:`point_codes` broadcast to ``sample_shape`` (``point``, ``one_hot``: no sampling)."""
    if config.codes == "latent":
        return sample_codes(key, params.codes, sample_shape)
    z = point_codes(params, config)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, tuple(sample_shape) + a.shape), z)


def _hyper_inputs(config: MetaPriorConfig, z: ZSample, layer: int, noise: Array | None = None) -> tuple:
    """Arguments of ``g`` for layer ``layer`` (1-based): receivers ``z_l``, senders ``z_{l-1}``."""
    return z.units[layer], z.units[layer - 1], (z.glob if config.global_dim > 0 else None), noise


def noise_shapes(config: MetaPriorConfig, num_points: int | None = None) -> list[tuple]:
    """Shapes of the standard normals one draw needs: per layer ``[D_{l-1}+1, D_l]`` weight
    noise (Gaussian head), ``[D_l, D_{l-1}+1, E]`` noise inputs (implicit head), or with
    ``num_points`` the Gaussian head's local-reparameterisation noise ``[N, D_l]``."""
    pairs = list(zip(config.widths[:-1], config.widths[1:]))
    if config.head == "implicit":
        return [(o, i + 1, config.noise_dim) for i, o in pairs]
    if num_points is not None:
        return [(num_points, o) for _, o in pairs]
    return [(i + 1, o) for i, o in pairs]


def weight_moments(hyper: dict, config: MetaPriorConfig, z: ZSample) -> list[tuple[Array, Array]]:
    """Gaussian head: per layer ``(mean, std)`` of ``p(W_l | Z)``, each ``[D_{l-1}+1, D_l]``."""
    if config.head != "gaussian":
        raise ValueError("weight_moments needs head='gaussian'")
    net, out = config.hypernet(), []
    for l in range(1, config.num_layers + 1):
        g = net.apply(hyper, *_hyper_inputs(config, z, l))  # [O, I+1, 2]
        scale = config.weight_scale(l)
        out.append((scale * g[..., 0].T, scale * jnp.exp(g[..., 1]).T))
    return out


def weights_from_noise(hyper: dict, config: MetaPriorConfig, z: ZSample, noise: list[Array] | None) -> list[Array]:
    """``W ~ p(W | Z)`` from standard normals shaped by :func:`noise_shapes`: list of
    ``[D_{l-1}+1, D_l]``. ``noise=None`` gives the Gaussian head's mean."""
    if config.head == "gaussian":
        moments = weight_moments(hyper, config, z)
        if noise is None:
            return [m for m, _ in moments]
        return [m + s * e for (m, s), e in zip(moments, noise)]
    if noise is None:
        raise ValueError("the implicit head needs noise")
    net = config.hypernet()
    return [net.apply(hyper, *_hyper_inputs(config, z, l, e))[..., 0].T * config.weight_scale(l)
            for l, e in zip(range(1, config.num_layers + 1), noise)]


def sample_weights(key: Array, hyper: dict, config: MetaPriorConfig, z: ZSample, noise: bool = True) -> list[Array]:
    """One draw of ``W ~ p(W | Z)``: list of ``[D_{l-1}+1, D_l]``. ``noise=False`` gives the
    Gaussian head's mean (the implicit head always needs its noise)."""
    eps = split_normal(key, noise_shapes(config), (), z.glob.dtype) if noise or config.head == "implicit" else None
    return weights_from_noise(hyper, config, z, eps)


def _lrt_from_noise(hyper: dict, config: MetaPriorConfig, z: ZSample, x: Array, noise: list[Array]) -> Array:
    """Output ``[N, D_L]`` for one code draw; the Gaussian head samples each pre-activation
    from ``N(Phi mu, Phi^2 s^2)`` (local reparameterisation, independent per point)."""
    if config.head != "gaussian":
        return forward(weights_from_noise(hyper, config, z, noise), x, config.activation)
    return networks.lrt_forward(weight_moments(hyper, config, z), x, config.activation, noise)


def lrt_forward(key: Array, hyper: dict, config: MetaPriorConfig, z: ZSample, x: Array) -> Array:
    """:func:`_lrt_from_noise` with fresh noise: ``x [N, D_0] -> [N, D_L]``."""
    return _lrt_from_noise(hyper, config, z, x, split_normal(key, noise_shapes(config, x.shape[0]), (), x.dtype))


def sigma_y(params: MetaPriorParams, config: MetaPriorConfig) -> Array:
    """Regression noise std ``[D_L]``: fixed ``config.sigma_y`` or ``exp(raw_sigma)``."""
    if config.sigma_y is not None:
        return jnp.full_like(params.raw_sigma, config.sigma_y)
    return jnp.exp(params.raw_sigma)


def log_likelihood(out: Array, y: Array, params: MetaPriorParams, config: MetaPriorConfig) -> Array:
    """Per-point ``log p(y | a_L)``: ``out [N, D_L]``; ``y [N, D_L]`` (regression) or
    integer labels ``[N]`` (categorical) -> ``[N]``."""
    if config.likelihood == "categorical":
        logp = jax.nn.log_softmax(out, axis=-1)
        return jnp.take_along_axis(logp, y.astype(jnp.int32)[:, None], axis=-1)[:, 0]
    sd = sigma_y(params, config)
    return jnp.sum(normal_log_prob(y, out, sd), axis=-1)


def elbo(key: Array, params: MetaPriorParams, config: MetaPriorConfig, x: Array, y: Array,
         weight: Array | None = None, scale: float | Array = 1.0, num_samples: int = 1,
         code_prior: Codes | None = None) -> tuple[Array, Array]:
    """Paper eq. 3 on a (mini)batch: returns ``(elbo, expected log-likelihood)`` scalars.

    ``x [B, D_0]``, ``y`` as in :func:`log_likelihood`, ``weight [B]`` per-point
    weights (padding mask; default ones), ``scale = N / B`` for minibatches.
    The Monte-Carlo average uses ``num_samples`` draws of ``Z`` (and of ``W``).
    ``code_prior`` replaces ``p(Z) = N(0, I)`` by a diagonal Gaussian (see :func:`code_kl`).
    ``codes='point'`` / ``'one_hot'``: the codes are not sampled and there is no code KL, so
    the two returned values are equal.
    """
    if code_prior is not None and config.codes != "latent":
        raise ValueError(f"code_prior needs codes='latent' (codes={config.codes!r} has no code prior)")
    weight = jnp.ones(x.shape[0], x.dtype) if weight is None else weight
    k_z, k_w = jax.random.split(key)
    z = draw_codes(k_z, params, config, (num_samples,))
    noise = split_normal(k_w, noise_shapes(config, x.shape[0]), (num_samples,), x.dtype)

    def one(zz: ZSample, e: list[Array]) -> Array:
        out = _lrt_from_noise(params.hyper, config, zz, x, e)
        return jnp.sum(weight * log_likelihood(out, y, params, config))

    ell = scale * jnp.mean(jax.vmap(one)(z, noise))
    if config.codes != "latent":
        return ell, ell
    return ell - code_kl(params.codes, code_prior), ell


@partial(jax.jit, static_argnames=("config", "num_samples", "weight_noise"))
def predict(key: Array, params: MetaPriorParams, config: MetaPriorConfig, x: Array, num_samples: int,
            z: ZSample | None = None, weight_noise: bool = True) -> Array:
    """Network outputs for ``num_samples`` joint draws of ``(Z, W)``: ``[S, N, D_L]``.
    Pass ``z`` (one unbatched draw) to clamp the codes, e.g. to :func:`mean_codes`;
    ``weight_noise=False`` uses the Gaussian head's mean weights."""
    k_z, k_w = jax.random.split(key)
    zs = draw_codes(k_z, params, config, (num_samples,)) if z is None else \
        jax.tree.map(lambda a: jnp.broadcast_to(a, (num_samples,) + a.shape), z)
    use_noise = weight_noise or config.head == "implicit"
    noise = split_normal(k_w, noise_shapes(config), (num_samples,), x.dtype) if use_noise else None

    def one(zz: ZSample, e: list[Array] | None) -> Array:
        return forward(weights_from_noise(params.hyper, config, zz, e), x, config.activation)

    return jax.vmap(one)(zs, noise)


@partial(jax.jit, static_argnames=("config", "num_samples"))
def predictive_probs(key: Array, params: MetaPriorParams, config: MetaPriorConfig, x: Array,
                     num_samples: int) -> Array:
    """Classification: Monte-Carlo mean of the softmax, ``[N, D_L]``."""
    return jnp.mean(jax.nn.softmax(predict(key, params, config, x, num_samples), axis=-1), axis=0)
