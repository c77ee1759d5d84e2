"""MetaPrior: unit codes and a shared hypernetwork as a weight prior (SPEC section 13).

Every unit ``u`` of layer ``l = 0..L`` (inputs and outputs included) has a code
``z_{l,u} in R^K`` with ``p(z) = N(0, I)`` and ``Q(z) = N(mu, diag sigma^2)``;
an optional global code ``z_s in R^G`` has the same treatment. The weights of
layer ``l`` are drawn from ``p(W_l | Z)`` given by :class:`HyperNet` on the pair
codes ``[z_{l,i}, z_{l-1,j}, z_s]`` (biases from ``[z_{l,i}, 0]``):

- Gaussian head: ``w ~ N(mu, s^2)``, ``(mu, log s) = g(.)``;
- implicit head: ``w = g(., eps)``, ``eps ~ N(0, I_E)`` per weight.

Both are multiplied by ``1 / sqrt(D_{l-1} + 1)`` so one ``g`` serves layers of
any fan-in with the scaled initialisation of SPEC section 3 (a design choice of
this package; the paper is silent on it).

The objective is the paper's eq. 3, ``E_Q(Z) E_p(W|Z) log p(D|W) - KL(Q(Z)||p(Z))``:
``p(W|Z)`` appears in both the model and the variational family and cancels,
so no weight KL is needed and the implicit head needs no density. The Gaussian
head uses local reparameterisation (pre-activations sampled per data point);
minibatches are scaled by ``N / B``.

Networks follow SPEC section 2: ``W_l [D_{l-1}+1, D_l]``, bias row last,
``a_l = [act(a_{l-1}), 1] W_l`` with identity before the first layer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnnp_jax.metaprior_hypernet import HyperNet, activation_fn

Array = jax.Array
HEADS = ("gaussian", "implicit")
LIKELIHOODS = ("gaussian", "categorical")


@dataclasses.dataclass(frozen=True)
class MetaPriorConfig:
    """Static settings (hashable, so it can be a jit static argument).

    ``widths = (D_0, ..., D_L)``; ``sigma_y`` fixes the regression noise (None
    learns it); ``init_code_std`` is the initial std of ``Q(Z)``.
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
        activation_fn(self.activation)
        activation_fn(self.hyper_activation)

    @property
    def num_layers(self) -> int:
        return len(self.widths) - 1

    def hypernet(self) -> HyperNet:
        return HyperNet(hidden=self.hyper_hidden, out_features=2 if self.head == "gaussian" else 1,
                        activation=self.hyper_activation, use_global=self.global_dim > 0,
                        noise_dim=self.noise_dim if self.head == "implicit" else 0)


class CodeQ(NamedTuple):
    """Diagonal Gaussian over a block of codes: ``mean, log_std [U, K]`` (or ``[G]``)."""

    mean: Array
    log_std: Array


class Codes(NamedTuple):
    """``Q(Z)``: one :class:`CodeQ` per layer ``0..L`` (``[D_l, K]``) and the global one ``[G]``."""

    units: tuple[CodeQ, ...]
    glob: CodeQ


class ZSample(NamedTuple):
    """One draw (or the mean) of all codes: ``units[l] [D_l, K]``, ``glob [G]``."""

    units: tuple[Array, ...]
    glob: Array


class MetaPriorParams(NamedTuple):
    """Everything trainable: ``codes`` (Q(Z)), ``hyper`` (flax params of g), ``raw_sigma [D_L]``."""

    codes: Codes
    hyper: dict
    raw_sigma: Array


def init(key: Array, config: MetaPriorConfig, dtype=jnp.float32) -> MetaPriorParams:
    """Code means from the prior ``N(0, I)`` (distinct codes break the unit symmetry),
    code stds ``init_code_std``, hypernetwork from flax's initialisers with the
    log-std head bias at ``init_weight_log_std``."""
    k_codes, k_glob, k_hyper = jax.random.split(key, 3)
    keys = jax.random.split(k_codes, len(config.widths))
    log_sd = math.log(config.init_code_std)
    units = tuple(CodeQ(jax.random.normal(k, (w, config.code_dim), dtype), jnp.full((w, config.code_dim), log_sd, dtype))
                  for k, w in zip(keys, config.widths))
    glob = CodeQ(jax.random.normal(k_glob, (config.global_dim,), dtype), jnp.full((config.global_dim,), log_sd, dtype))
    z = mean_codes(Codes(units, glob))
    hyper = config.hypernet().init(k_hyper, *_hyper_inputs(config, z, 1, jax.random.PRNGKey(0)))
    hyper = jax.tree.map(lambda a: a.astype(dtype), hyper)
    if config.head == "gaussian":
        bias = hyper["params"]["head"]["bias"].at[1].set(config.init_weight_log_std)
        hyper = {"params": {**hyper["params"], "head": {**hyper["params"]["head"], "bias": bias}}}
    return MetaPriorParams(Codes(units, glob), hyper, jnp.zeros((config.widths[-1],), dtype))


def code_kl(codes: Codes) -> Array:
    """Closed-form ``KL(Q(Z) || N(0, I))`` summed over all codes (scalar):
    ``0.5 * sum(sigma^2 + mu^2 - 1 - 2 log sigma)``."""
    def kl(q: CodeQ) -> Array:
        return 0.5 * jnp.sum(jnp.exp(2 * q.log_std) + q.mean**2 - 1.0 - 2 * q.log_std)
    return sum(kl(q) for q in codes.units) + kl(codes.glob)


def sample_codes(key: Array, codes: Codes) -> ZSample:
    """Reparameterised draw ``z = mu + sigma * eps`` of every code."""
    keys = jax.random.split(key, len(codes.units) + 1)
    draw = lambda k, q: q.mean + jnp.exp(q.log_std) * jax.random.normal(k, q.mean.shape, q.mean.dtype)
    return ZSample(tuple(draw(k, q) for k, q in zip(keys[:-1], codes.units)), draw(keys[-1], codes.glob))


def mean_codes(codes: Codes) -> ZSample:
    return ZSample(tuple(q.mean for q in codes.units), codes.glob.mean)


def _hyper_inputs(config: MetaPriorConfig, z: ZSample, layer: int, key: Array) -> tuple:
    """Arguments of ``g`` for layer ``layer`` (1-based): receivers ``z_l``, senders ``z_{l-1}``."""
    z_glob = z.glob if config.global_dim > 0 else None
    noise = None
    if config.head == "implicit":
        shape = (config.widths[layer], config.widths[layer - 1] + 1, config.noise_dim)
        noise = jax.random.normal(key, shape, z.units[layer].dtype)
    return z.units[layer], z.units[layer - 1], z_glob, noise


def weight_moments(hyper: dict, config: MetaPriorConfig, z: ZSample) -> list[tuple[Array, Array]]:
    """Gaussian head: per layer ``(mean, std)`` of ``p(W_l | Z)``, each ``[D_{l-1}+1, D_l]``."""
    if config.head != "gaussian":
        raise ValueError("weight_moments needs head='gaussian'")
    net, out = config.hypernet(), []
    for l in range(1, config.num_layers + 1):
        g = net.apply(hyper, *_hyper_inputs(config, z, l, None))  # [O, I+1, 2]
        scale = 1.0 / math.sqrt(config.widths[l - 1] + 1)
        out.append((scale * g[..., 0].T, scale * jnp.exp(g[..., 1]).T))
    return out


def sample_weights(key: Array, hyper: dict, config: MetaPriorConfig, z: ZSample, noise: bool = True) -> list[Array]:
    """One draw of ``W ~ p(W | Z)``: list of ``[D_{l-1}+1, D_l]``. ``noise=False`` gives the
    Gaussian head's mean (the implicit head always needs its noise)."""
    keys = jax.random.split(key, config.num_layers)
    if config.head == "gaussian":
        moments = weight_moments(hyper, config, z)
        if not noise:
            return [m for m, _ in moments]
        return [m + s * jax.random.normal(k, m.shape, m.dtype) for k, (m, s) in zip(keys, moments)]
    net, out = config.hypernet(), []
    for l, k in zip(range(1, config.num_layers + 1), keys):
        g = net.apply(hyper, *_hyper_inputs(config, z, l, k))
        out.append(g[..., 0].T / math.sqrt(config.widths[l - 1] + 1))
    return out


def forward(weights: list[Array], x: Array, activation: str) -> Array:
    """SPEC section 2 network: ``x [N, D_0] -> a_L [N, D_L]``."""
    act, h = activation_fn(activation), x
    for l, w in enumerate(weights):
        inp = h if l == 0 else act(h)
        h = inp @ w[:-1] + w[-1]
    return h


def lrt_forward(key: Array, hyper: dict, config: MetaPriorConfig, z: ZSample, x: Array) -> Array:
    """Output ``[N, D_L]`` for one code draw; the Gaussian head samples each pre-activation
    from ``N(Phi mu, Phi^2 s^2)`` (local reparameterisation, independent per point)."""
    if config.head != "gaussian":
        return forward(sample_weights(key, hyper, config, z), x, config.activation)
    act, h = activation_fn(config.activation), x
    keys = jax.random.split(key, config.num_layers)
    for l, (k, (m, s)) in enumerate(zip(keys, weight_moments(hyper, config, z))):
        inp = h if l == 0 else act(h)
        mean = inp @ m[:-1] + m[-1]
        var = (inp**2) @ (s[:-1] ** 2) + s[-1] ** 2
        h = mean + jnp.sqrt(var) * jax.random.normal(k, mean.shape, mean.dtype)
    return h


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
    return jnp.sum(-0.5 * ((y - out) / sd) ** 2 - jnp.log(sd) - 0.5 * math.log(2 * math.pi), axis=-1)


def elbo(key: Array, params: MetaPriorParams, config: MetaPriorConfig, x: Array, y: Array,
         weight: Array | None = None, scale: float | Array = 1.0, num_samples: int = 1) -> tuple[Array, Array]:
    """Paper eq. 3 on a (mini)batch: returns ``(elbo, expected log-likelihood)`` scalars.

    ``x [B, D_0]``, ``y`` as in :func:`log_likelihood`, ``weight [B]`` per-point
    weights (padding mask; default ones), ``scale = N / B`` for minibatches.
    The Monte-Carlo average uses ``num_samples`` draws of ``Z`` (and of ``W``).
    """
    weight = jnp.ones(x.shape[0], x.dtype) if weight is None else weight

    def one(k: Array) -> Array:
        kz, kw = jax.random.split(k)
        out = lrt_forward(kw, params.hyper, config, sample_codes(kz, params.codes), x)
        return jnp.sum(weight * log_likelihood(out, y, params, config))

    ell = scale * jnp.mean(jax.vmap(one)(jax.random.split(key, num_samples)))
    return ell - code_kl(params.codes), ell


def predict(key: Array, params: MetaPriorParams, config: MetaPriorConfig, x: Array, num_samples: int,
            z: ZSample | None = None, weight_noise: bool = True) -> Array:
    """Network outputs for ``num_samples`` joint draws of ``(Z, W)``: ``[S, N, D_L]``.
    Pass ``z`` to clamp the codes (e.g. to their means)."""
    def one(k: Array) -> Array:
        kz, kw = jax.random.split(k)
        zz = sample_codes(kz, params.codes) if z is None else z
        return forward(sample_weights(kw, params.hyper, config, zz, weight_noise), x, config.activation)

    return jax.vmap(one)(jax.random.split(key, num_samples))


def predictive_probs(key: Array, params: MetaPriorParams, config: MetaPriorConfig, x: Array,
                     num_samples: int) -> Array:
    """Classification: Monte-Carlo mean of the softmax, ``[N, D_L]``."""
    return jnp.mean(jax.nn.softmax(predict(key, params, config, x, num_samples), axis=-1), axis=0)
