"""Synthetic 1-D task families for meta-training (SPEC section 11, section 13).

Every family is a pure, jittable function

    sample_<family>(key, num_tasks, n_max, n_range, **family_params)
        -> (x [T, n_max, x_dim], y [T, n_max, y_dim], mask [T, n_max])

with task sizes ``n ~ U{n_range[0], ..., n_range[1] - 1}`` (the convention of
:func:`bnnp_jax.data.tasks.size_mask`); real points come first and padded
points have ``x = 0, y = 0, mask = 0``. ``num_tasks``, ``n_max``, ``n_range``
and the family parameters are static (Python values), so under ``jit`` bind
them with ``functools.partial`` or :func:`bnnp_jax.data.registry.make_sampler`.
The output is deterministic given ``key``; ``dtype=None`` means JAX's default
float (float64 when x64 is enabled).

Each family also has a noise-free per-task function draw
``draw_<family>(key, x [N, x_dim], **params) -> f [N, y_dim]``, which the
sampler uses at random inputs and :func:`registry.true_function_samples`
uses on a plotting grid.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from bnnp_jax.core.networks import ACTIVATIONS
from bnnp_jax.data.tasks import size_mask

__all__ = ["jit_sampler", "float_dtype", "check_sizes", "check_range", "check_nonnegative",
           "check_positive", "finish", "sample_uniform_family", "subset_points", "sample_from_pool",
           "se_kernel", "default_jitter", "draw_gp", "draw_sawtooth", "sample_sawtooth", "draw_heaviside",
           "sample_heaviside", "draw_gp_family", "sample_gp", "check_widths", "draw_bnn_prior",
           "sample_bnn_prior", "draw_cubic", "sample_cubic", "draw_ecg", "ecg_grid", "sample_ecg", "DRAWS"]

Array = jax.Array


# ----------------------------------------------------------------------------- checks and helpers
def _hashable(v):
    return tuple(_hashable(u) for u in v) if isinstance(v, (list, tuple)) else v


def jit_sampler(fn: Callable = None, *, traced: Sequence[str] = ("key",)):
    """``jax.jit`` a sampler with every argument static except ``traced`` ones.

    Lists become tuples so that configs from YAML hash. Calls from inside an
    outer ``jit``/``scan`` inline as usual; eager calls compile once per setting.
    """
    if fn is None:
        return functools.partial(jit_sampler, traced=traced)
    sig = inspect.signature(fn)
    jitted = jax.jit(fn, static_argnames=[k for k in sig.parameters if k not in traced])

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return jitted(**{k: v if k in traced else _hashable(v) for k, v in bound.arguments.items()})

    return wrapper


def float_dtype(dtype=None):
    """The requested float dtype, or JAX's default float (float64 under x64)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64 if dtype is None else dtype)


def check_sizes(num_tasks: int, n_max: int, n_range: Sequence[int]) -> tuple[int, int]:
    """Validate the static batch sizes; returns ``n_range`` as a tuple of ints."""
    if int(num_tasks) < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    if int(n_max) < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    if len(n_range) != 2:
        raise ValueError(f"n_range must be a pair (lo, hi), got {n_range}")
    lo, hi = int(n_range[0]), int(n_range[1])
    if not 1 <= lo < hi <= n_max + 1:
        raise ValueError(f"n_range must satisfy 1 <= lo < hi <= n_max + 1, got {n_range} with n_max={n_max}")
    return lo, hi


def check_range(name: str, value: Sequence[float]) -> tuple[float, float]:
    if len(value) != 2 or not float(value[0]) < float(value[1]):
        raise ValueError(f"{name} must be a pair (lo, hi) with lo < hi, got {value}")
    return float(value[0]), float(value[1])


def check_nonnegative(name: str, value: float) -> float:
    if not float(value) >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def check_positive(name: str, value: float) -> float:
    if not float(value) > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def finish(x: Array, y: Array, mask: Array) -> tuple[Array, Array, Array]:
    """Zero the padded points so padding carries no information."""
    return x * mask[..., None], y * mask[..., None], mask


def sample_uniform_family(key, num_tasks, n_max, n_range, draw, x_range, x_dim, noise, dtype):
    """Shared body: ``x ~ U(x_range)^x_dim``, ``y = draw(key, x) + noise * eps``."""
    lo, hi = check_range("x_range", x_range)
    n_range = check_sizes(num_tasks, n_max, n_range)
    noise = check_nonnegative("noise", noise)
    # Few, batched random calls: each one costs noticeable XLA compile time on CPU.
    k_mask, k_x, k_e, k_f = jax.random.split(key, 4)
    mask = size_mask(k_mask, num_tasks, n_max, n_range, dtype)
    x = jax.random.uniform(k_x, (num_tasks, n_max, x_dim), dtype, lo, hi)
    f = jax.vmap(draw)(jax.random.split(k_f, num_tasks), x)
    y = f + noise * jax.random.normal(k_e, f.shape, dtype)
    return finish(x, y, mask)


@jit_sampler(traced=("key", "x", "y", "valid"))
def subset_points(key, x, y, valid, n_max, n_range):
    """Task ``t`` = a random subset of the points of dataset ``t``.

    Args:
      x: ``[T, P, x_dim]``, y: ``[T, P, y_dim]``, valid: ``[T, P]`` (1 = usable) or None.
    Returns ``(x [T, n_max, x_dim], y [T, n_max, y_dim], mask [T, n_max])``:
    ``n`` distinct valid points per task (``n`` from ``n_range``, truncated to
    the number of valid points), padding zeroed.
    """
    num_tasks, num_points = y.shape[0], y.shape[1]
    n_range = check_sizes(num_tasks, n_max, n_range)
    if n_max > num_points:
        raise ValueError(f"n_max={n_max} exceeds the {num_points} points per dataset")
    dtype = y.dtype
    valid = jnp.ones((num_tasks, num_points), dtype) if valid is None else jnp.asarray(valid, dtype)
    k_mask, k_perm = jax.random.split(key)
    mask = size_mask(k_mask, num_tasks, n_max, n_range, dtype)

    # Valid points rank first in a random order, so a prefix is a uniform subset.
    scores = jax.random.uniform(k_perm, (num_tasks, num_points)) + 2.0 * (1.0 - valid)
    order = jnp.argsort(scores, axis=1)[:, :n_max]
    x = jnp.take_along_axis(x, order[..., None], axis=1)
    y = jnp.take_along_axis(y, order[..., None], axis=1)
    mask = mask * jnp.take_along_axis(valid, order, axis=1)
    return finish(x.astype(dtype), y, mask)


@jit_sampler(traced=("key", "x_pool", "y_pool", "valid"))
def sample_from_pool(key, x_pool, y_pool, valid, num_tasks, n_max, n_range):
    """Tasks as random point subsets of randomly chosen fixed datasets (images, ERA5 days).

    Args:
      x_pool: ``[P, x_dim]`` inputs shared by all datasets, or ``[I, P, x_dim]``.
      y_pool: ``[I, P, y_dim]`` targets of ``I`` datasets.
      valid: ``[I, P]`` 1 for usable points (e.g. not missing), or None.
    Each task picks a dataset uniformly, then a point subset as in :func:`subset_points`.
    """
    check_sizes(num_tasks, n_max, n_range)
    k_idx, k_sub = jax.random.split(key)
    idx = jax.random.randint(k_idx, (num_tasks,), 0, y_pool.shape[0])
    x = jnp.broadcast_to(x_pool, (num_tasks,) + x_pool.shape) if x_pool.ndim == 2 else x_pool[idx]
    return subset_points(k_sub, x, y_pool[idx], None if valid is None else valid[idx], n_max, n_range)


def se_kernel(x1: Array, x2: Array, lengthscale: float, variance: float = 1.0) -> Array:
    """Squared-exponential kernel ``[N1, N2]`` between ``x1 [N1, D]`` and ``x2 [N2, D]``."""
    d2 = jnp.sum((x1[:, None, :] - x2[None, :, :]) ** 2, axis=-1)
    return variance * jnp.exp(-0.5 * d2 / lengthscale**2)


def default_jitter(dtype) -> float:
    # SE kernels on dense inputs are numerically singular; the jitter is an
    # added white-noise variance (std 0.01 in float32, 1e-4 in float64).
    return 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def draw_gp(key, x, lengthscale=0.5, variance=1.0, jitter=None):
    """One SE-GP draw ``f [N, 1]`` at ``x [N, D]`` by a jittered Cholesky factor."""
    jitter = default_jitter(x.dtype) if jitter is None else jitter
    k = se_kernel(x, x, lengthscale, variance) + jitter * jnp.eye(x.shape[0], dtype=x.dtype)
    chol = jnp.linalg.cholesky(k)
    return chol @ jax.random.normal(key, (x.shape[0], 1), x.dtype)


# ----------------------------------------------------------------------------- families
def draw_sawtooth(key, x):
    """``f = 1.33 (mod(x, 0.75) - 0.375) + e1 x / 3 + 0.25 e2``, ``e ~ N(0, I)`` per task."""
    e = jax.random.normal(key, (2,), x.dtype)
    return 1.33 * (jnp.mod(x, 0.75) - 0.375) + e[0] * x / 3.0 + 0.25 * e[1]


@jit_sampler
def sample_sawtooth(key, num_tasks, n_max, n_range, x_range=(-2.0, 2.0), noise=0.05, dtype=None):
    """Sawtooth tasks with a random slope and offset (SPEC section 11). x_dim = y_dim = 1."""
    return sample_uniform_family(key, num_tasks, n_max, n_range, draw_sawtooth, x_range, 1, noise, float_dtype(dtype))


def draw_heaviside(key, x, lengthscale=1.0):
    """``f = sign(g)`` with ``g`` a centred SE-GP draw (values exactly in {-1, 1})."""
    check_positive("lengthscale", lengthscale)
    g = draw_gp(key, x, lengthscale)
    return jnp.where(g >= 0, 1.0, -1.0).astype(x.dtype)


@jit_sampler
def sample_heaviside(key, num_tasks, n_max, n_range, x_range=(-5.0, 5.0), noise=0.01, lengthscale=1.0, dtype=None):
    """Step functions: the sign of an SE-GP draw (l = 1), SPEC section 11. x_dim = y_dim = 1."""
    draw = lambda k, x: draw_heaviside(k, x, lengthscale)  # noqa: E731
    return sample_uniform_family(key, num_tasks, n_max, n_range, draw, x_range, 1, noise, float_dtype(dtype))


def draw_gp_family(key, x, lengthscale=0.5, variance=1.0):
    check_positive("lengthscale", lengthscale)
    check_positive("variance", variance)
    return draw_gp(key, x, lengthscale, variance)


@jit_sampler
def sample_gp(key, num_tasks, n_max, n_range, x_range=(-2.0, 2.0), noise=0.05, lengthscale=0.5, variance=1.0,
              x_dim=1, dtype=None):
    """SE-GP draws plus Gaussian noise (SPEC section 11). y_dim = 1.

    ``y ~ N(0, K + (noise^2 + jitter) I)`` is sampled in one Cholesky; this has
    the law of ``f + noise * eps`` and is better conditioned than factoring ``K``.
    """
    check_positive("lengthscale", lengthscale)
    check_positive("variance", variance)
    noise = check_nonnegative("noise", noise)
    dtype = float_dtype(dtype)

    def draw(k, x):
        return draw_gp(k, x, lengthscale, variance, noise**2 + default_jitter(x.dtype))

    return sample_uniform_family(key, num_tasks, n_max, n_range, draw, x_range, int(x_dim), 0.0, dtype)


def check_widths(hidden: Sequence[int]) -> tuple[int, ...]:
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive integers, got {hidden}")
    return hidden


def draw_bnn_prior(key, x, hidden=(64, 64), activation="relu", y_dim=1):
    """A function from a BNN with ``W_l ~ N(0, I / (D_{l-1} + 1))`` (SPEC sections 2, 3).

    Layer l has ``W_l [D_{l-1} + 1, D_l]`` (bias last), ``a_l = [act(a_{l-1}), 1] W_l``
    with no activation on the input, and a linear output: ``f [N, y_dim]``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    widths = (x.shape[-1],) + check_widths(hidden) + (int(y_dim),)
    sizes = [(d_in + 1) * d_out for d_in, d_out in zip(widths[:-1], widths[1:])]
    z = jax.random.normal(key, (sum(sizes),), x.dtype)  # all weights in one call
    a, start = x, 0
    for layer, (size, d_in, d_out) in enumerate(zip(sizes, widths[:-1], widths[1:])):
        h = a if layer == 0 else ACTIVATIONS[activation](a)
        phi = jnp.concatenate([h, jnp.ones_like(h[:, :1])], axis=-1)
        w = z[start : start + size].reshape(d_in + 1, d_out) / math.sqrt(d_in + 1)
        a, start = phi @ w, start + size
    return a


@jit_sampler
def sample_bnn_prior(key, num_tasks, n_max, n_range, x_range=(-2.0, 2.0), noise=0.05, hidden=(64, 64),
                     activation="relu", x_dim=1, y_dim=1, dtype=None):
    """Functions drawn from the standard BNN prior, plus noise (SPEC section 11).

    Also the KL-table data: ``hidden=(20, 20), x_range=(-4, 4), noise=0.1``.
    """
    if int(x_dim) < 1 or int(y_dim) < 1:
        raise ValueError(f"x_dim and y_dim must be >= 1, got x_dim={x_dim}, y_dim={y_dim}")
    hidden = check_widths(hidden)
    draw = lambda k, x: draw_bnn_prior(k, x, hidden, activation, y_dim)  # noqa: E731
    return sample_uniform_family(key, num_tasks, n_max, n_range, draw, x_range, int(x_dim), noise, float_dtype(dtype))


def draw_cubic(key, x, scale=False):
    """``f = x^3`` (times 1/30 when ``scale``); deterministic, ``key`` is unused."""
    del key
    return x**3 / 30.0 if scale else x**3


@jit_sampler
def sample_cubic(key, num_tasks, n_max=20, n_range=(20, 21), x_range=(-4.0, 4.0), noise=3.0, scale=False, dtype=None):
    """The MetaPrior cubic toy (seed 003): ``y = x^3 + N(0, 3^2)``, x ~ U[-4, 4], 20 points.

    ``scale=True`` divides ``y`` (signal and noise) by 30 so it is O(1).
    """
    draw = lambda k, x: draw_cubic(k, x, bool(scale))  # noqa: E731
    noise = check_nonnegative("noise", noise) / (30.0 if scale else 1.0)
    return sample_uniform_family(key, num_tasks, n_max, n_range, draw, x_range, 1, noise, float_dtype(dtype))


# ECG components (P, Q, R, S, T): offset from the R peak [s], width (std) [s], amplitude [mV].
_ECG_OFFSET = (-0.20, -0.035, 0.0, 0.035, 0.30)
_ECG_WIDTH = (0.025, 0.010, 0.015, 0.012, 0.055)
_ECG_AMP = (0.15, -0.12, 1.0, -0.25, 0.30)


def draw_ecg(key, x, window=(-3.0, 3.0)):
    """One procedural heartbeat ``f [N, 1]``: five Gaussians (P, QRS, T) on a flat baseline.

    Per beat: R-peak time ``c ~ U(window shrunk by 1 s)``, a tempo factor
    ``r ~ U(0.85, 1.15)`` stretching offsets and widths, log-normal (10%) width
    jitter, 20% amplitude jitter (10% on R), 10 ms offset jitter on P and T,
    and a baseline ``b ~ N(0, 0.05^2)``.
    """
    lo, hi = check_range("window", window)
    dt = x.dtype
    z = jax.random.normal(key, (18,), dt)  # one call; uniforms as Phi(z)
    u = jax.scipy.special.ndtr(z[:2])
    c = lo + 1.0 + (hi - lo - 2.0) * u[0]
    r = 0.85 + 0.3 * u[1]
    width = jnp.asarray(_ECG_WIDTH, dt) * jnp.exp(0.1 * z[2:7])
    amp = jnp.asarray(_ECG_AMP, dt) * (1.0 + jnp.asarray((0.2, 0.2, 0.1, 0.2, 0.2), dt) * z[7:12])
    offset = jnp.asarray(_ECG_OFFSET, dt) + jnp.asarray((0.01, 0, 0, 0, 0.01), dt) * z[12:17]
    centre = c + r * offset
    bumps = amp * jnp.exp(-0.5 * ((x - centre) / (r * width)) ** 2)  # [N, 5]
    return 0.05 * z[17] + jnp.sum(bumps, axis=-1, keepdims=True)


def ecg_grid(num_points=600, window=(-3.0, 3.0), dtype=None) -> Array:
    """The sampling grid ``[num_points, 1]`` on ``[lo, hi)`` (600 points at 100 Hz by default)."""
    lo, hi = check_range("window", window)
    return (lo + (hi - lo) * jnp.arange(num_points) / num_points).astype(float_dtype(dtype))[:, None]


@jit_sampler
def sample_ecg(key, num_tasks, n_max=600, n_range=(200, 601), window=(-3.0, 3.0), num_points=600, noise=0.02,
               dtype=None):
    """ECG-like beats (SPEC section 11): one beat in a 6 s window, a random point subset per task."""
    if int(num_points) < 1 or n_max > int(num_points):
        raise ValueError(f"num_points must be >= n_max={n_max}, got {num_points}")
    check_sizes(num_tasks, n_max, n_range)
    noise = check_nonnegative("noise", noise)
    dtype = float_dtype(dtype)
    grid = ecg_grid(int(num_points), window, dtype)
    k_f, k_e, k_sub = jax.random.split(key, 3)
    f = jax.vmap(lambda k: draw_ecg(k, grid, window))(jax.random.split(k_f, num_tasks))
    y = f + noise * jax.random.normal(k_e, f.shape, dtype)
    x = jnp.broadcast_to(grid, (num_tasks,) + grid.shape)
    return subset_points(k_sub, x, y, None, n_max, n_range)


DRAWS = {
    "sawtooth": draw_sawtooth,
    "heaviside": draw_heaviside,
    "bnn_prior": draw_bnn_prior,
    "gp": draw_gp_family,
    "cubic": draw_cubic,
    "ecg": draw_ecg,
}
