"""Annealed importance sampling for ``log p(D)`` and bidirectional Monte Carlo (SPEC section 10).

Intermediate targets follow the geometric path from the prior to the posterior,
``f_beta(theta) = p(theta) p(D | theta)^beta``, ``0 = beta_0 < ... < beta_T = 1``
(Neal 2001). One AIS run moves ``K`` particles (vmapped) through a sequence of
temperatures (``lax.scan``): at step ``t`` each particle's log weight gains
``(beta_t - beta_{t-1}) log p(D | theta)`` and the particle then takes HMC steps
that leave ``f_{beta_t}`` invariant, with a real Metropolis-Hastings test
(SPEC section 12).

- Forward AIS (``beta: 0 -> 1``, particles from the prior) gives an unbiased
  estimate of ``p(D)``, so ``logmeanexp(log w)`` is a stochastic *lower* bound.
- Reverse AIS (``beta: 1 -> 0``, particles from the exact posterior) gives an
  unbiased estimate of ``1 / p(D)``, so ``-logmeanexp(log w)`` is a stochastic
  *upper* bound (Grosse, Ghahramani & Adams 2015). It is only a bound when the
  start is an exact posterior sample: closed form without hidden layers, or
  the generating weights of data simulated from this very model.

The HMC step sizes are tuned per temperature in a separate forward run and
then frozen, so the kernels of the measured runs do not depend on their own
particles (adapting inside the run would bias the weights), and the forward
and reverse runs use the same kernel at each temperature. Momenta are
preconditioned by the prior covariance's diagonal, and each transition draws
its step size around the tuned one (a fixed trajectory length can resonate
with a near-Gaussian target and freeze particles). The default path is
geometric in ``beta`` from a first temperature set by the data
(:func:`auto_beta_min`).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.core.driver import run_chunks
from bnnp_jax.inference import model as bnn

__all__ = ["AISResult", "sigmoid_schedule", "hmc_step", "STEP_JITTER", "tune_step_sizes", "run",
           "BDMCResult", "SCHEDULES", "schedule", "auto_beta_min", "bdmc", "tile_init", "as_numpy"]

Array = jax.Array


class AISResult(NamedTuple):
    """One AIS run.

    Attributes:
      log_weights: ``[K]`` per-particle log importance weights.
      log_z: the bound on ``log p(D)`` (lower for forward, upper for reverse).
      stderr: delta-method standard error of ``log_z`` over particles.
      ess: effective sample size of the weights.
      accept_rate: ``[T]`` mean Metropolis acceptance probability per temperature.
      particles: ``[K, P]`` final states.
      direction: ``"forward"`` or ``"reverse"``.
    """

    log_weights: Array
    log_z: Array
    stderr: Array
    ess: Array
    accept_rate: Array
    particles: Array
    direction: str


def sigmoid_schedule(num_temps: int, delta: float = 4.0, dtype=None) -> Array:
    """Sigmoidal temperatures ``[num_temps + 1]`` from exactly 0 to exactly 1 (Grosse et al. 2015).

    Spends more steps near both ends, where the log-likelihood changes fastest.
    """
    if num_temps < 1:
        raise ValueError(f"num_temps must be >= 1, got {num_temps}")
    s = jax.nn.sigmoid(jnp.linspace(-delta, delta, num_temps + 1, dtype=dtype))
    return (s - s[0]) / (s[-1] - s[0])


def _inv_mass(model: bnn.BNNModel) -> Array:
    """Diagonal of the prior covariance in the flat order ``[P]`` (the HMC inverse mass)."""
    return jnp.concatenate([jnp.sum(t**2, axis=-1).reshape(-1) for t in model.prior_scale_trils])


def _log_terms(model, x, y, mask):
    """``theta [P] -> (log prior, log likelihood)``."""

    def terms(theta):
        w = bnn.unflatten(model, theta)
        return bnn.log_prior(model, w), bnn.log_likelihood(model, w, x, y, mask)

    return terms


def hmc_step(key, theta, beta, step_size, num_leapfrog, terms, inv_mass, jitter=0.0):
    """One HMC transition for ``f_beta`` from one particle ``theta [P]``.

    The step size is drawn from ``step_size * U(1 - jitter, 1 + jitter)``
    independently of the state (so detailed balance holds): a fixed trajectory
    length can resonate with a near-Gaussian target's period and leave particles
    where they are, which shows up as heavy-tailed AIS weights. Returns the new
    state, its log-likelihood, and the acceptance probability. A non-finite
    proposal energy counts as a rejection, as in any HMC.
    """

    def neg_energy(th):
        lp, ll = terms(th)
        return lp + beta * ll, ll

    grad_fn = jax.value_and_grad(neg_energy, has_aux=True)
    mom_key, u_key, e_key = jax.random.split(key, 3)
    step_size = step_size * jax.random.uniform(e_key, dtype=theta.dtype, minval=1 - jitter, maxval=1 + jitter)
    p0 = jax.random.normal(mom_key, theta.shape, theta.dtype) / jnp.sqrt(inv_mass)
    (lj0, ll0), g0 = grad_fn(theta)

    def leap(carry, _):
        th, p, g = carry
        p = p + 0.5 * step_size * g
        th = th + step_size * inv_mass * p
        (lj, ll), g = grad_fn(th)
        p = p + 0.5 * step_size * g
        return (th, p, g), (lj, ll)

    (th1, p1, _), (ljs, lls) = jax.lax.scan(leap, (theta, p0, g0), None, length=num_leapfrog)
    kinetic = lambda p: 0.5 * jnp.sum(inv_mass * p**2)
    log_alpha = (ljs[-1] - kinetic(p1)) - (lj0 - kinetic(p0))
    log_alpha = jnp.where(jnp.isfinite(log_alpha), jnp.minimum(log_alpha, 0.0), -jnp.inf)
    accept = jnp.log(jax.random.uniform(u_key, dtype=theta.dtype)) < log_alpha
    return jnp.where(accept, th1, theta), jnp.where(accept, lls[-1], ll0), jnp.exp(log_alpha)


STEP_JITTER = 0.5  # step sizes vary in [0.5, 1.5] x the tuned value (see hmc_step)


def _transition(key, thetas, beta, step_size, problem, num_leapfrog, num_mcmc_steps):
    """``num_mcmc_steps`` HMC steps for all particles ``[K, P]``; returns states and mean acceptance."""
    model, x, y, mask = problem
    terms, inv_mass = _log_terms(model, x, y, mask), _inv_mass(model)
    step = jax.vmap(hmc_step, in_axes=(0, 0, None, None, None, None, None, None))

    def body(th, k):
        keys = jax.random.split(k, th.shape[0])
        th, _, acc = step(keys, th, beta, step_size, num_leapfrog, terms, inv_mass, STEP_JITTER)
        return th, jnp.mean(acc)

    thetas, acc = jax.lax.scan(body, thetas, jax.random.split(key, num_mcmc_steps))
    return thetas, jnp.mean(acc)


def _anneal_scan(carry, inputs, problem, num_leapfrog, num_mcmc_steps, adapt_rate, target_accept):
    """Scan one chunk of temperatures.

    ``carry = (thetas [K, P], log_w [K], log_eps)``; ``inputs = (keys, beta_prev,
    beta_next, eps)`` each ``[C]``. With ``adapt_rate == 0`` the given ``eps`` are
    used; otherwise ``exp(log_eps)`` is used and nudged towards ``target_accept``
    (tuning runs). Returns the carry and, per temperature, the acceptance and step size.
    """
    model, x, y, mask = problem

    def body(carry, inp):
        th, lw, le = carry
        k, bp, bn, e = inp
        loglik = jax.vmap(lambda t: bnn.log_likelihood(model, bnn.unflatten(model, t), x, y, mask))(th)
        lw = lw + (bn - bp) * loglik
        e = jnp.where(adapt_rate > 0, jnp.exp(le), e)
        th, acc = _transition(k, th, bn, e, problem, num_leapfrog, num_mcmc_steps)
        return (th, lw, le + adapt_rate * (acc - target_accept)), (acc, e)

    return jax.lax.scan(body, carry, inputs)


_anneal_chunk = jax.jit(_anneal_scan, static_argnums=(3, 4))


@partial(jax.jit, static_argnums=(3, 4))
def _anneal_chunk_batch(carry, inputs, problem, num_leapfrog, num_mcmc_steps, adapt_rate, target_accept):
    # one AIS run per batch element (its own particles, data, model and temperatures), vmapped
    one = lambda c, i, p: _anneal_scan(c, i, p, num_leapfrog, num_mcmc_steps, adapt_rate, target_accept)
    return jax.vmap(one)(carry, inputs, problem)


def _anneal(key, problem, init, betas, eps, *, num_leapfrog, num_mcmc_steps, adapt_rate=0.0, target_accept=0.65,
            init_step_size=0.5, desc="AIS", progress_bar=True, chunk_size=100):
    """Anneal ``init [K, P]`` along ``betas [T + 1]`` in fixed-size jitted chunks.

    The schedule is padded to a whole number of chunks by repeating its last
    temperature (zero weight increment, extra invariant moves), so every chunk
    reuses one compiled program. Returns the carry and per-temperature
    acceptance and step sizes ``[T]``. A batch of runs (``init [B, K, P]``, ``betas``
    and ``eps [B, T + 1]``, ``key [B, 2]``, every leaf of ``problem`` ``[B, ...]``) runs
    as one vmapped program, outputs ``[B, T]``.
    """
    batched = init.ndim == 3
    num_steps = betas.shape[-1] - 1
    pad = -num_steps % chunk_size
    b = jnp.concatenate([betas, jnp.repeat(betas[..., -1:], pad, axis=-1)], axis=-1)
    e = jnp.concatenate([eps, jnp.repeat(eps[..., -1:], pad, axis=-1)], axis=-1)
    dtype = init.dtype
    log_eps = jnp.full(init.shape[:-2], math.log(init_step_size), dtype)
    carry = (init, jnp.zeros(init.shape[:-1], dtype), log_eps)
    split = jax.vmap(jax.random.split, (0, None)) if batched else jax.random.split
    chunk = _anneal_chunk_batch if batched else _anneal_chunk

    def run_chunk(state, a, n):
        carry, key = state
        parts = split(key, 2)
        key, sub = parts[..., 0, :], parts[..., 1, :]
        inputs = (split(sub, n), b[..., a : a + n], b[..., a + 1 : a + n + 1], e[..., a + 1 : a + n + 1])
        carry, out = chunk(carry, inputs, problem, num_leapfrog, num_mcmc_steps,
                           jnp.asarray(adapt_rate, dtype), jnp.asarray(target_accept, dtype))
        return (carry, key), out

    (carry, _), outs = run_chunks(run_chunk, (carry, key), num_steps + pad, chunk_size, desc=desc,
                                  progress=progress_bar)
    accs, steps = zip(*outs)
    return (carry, jnp.concatenate(accs, axis=-1)[..., :num_steps],
            jnp.concatenate(steps, axis=-1)[..., :num_steps])


def _prior_particles(key, model, num_particles, batched=False):
    if batched:
        return jax.vmap(lambda k, m: _prior_particles(k, m, num_particles))(key, model)
    return jax.vmap(lambda k: bnn.flatten(bnn.prior_sample(k, model)))(jax.random.split(key, num_particles))


def tune_step_sizes(
    key, model, x, y, betas, *, num_particles=16, num_leapfrog=10, num_mcmc_steps=1, target_accept=0.65,
    init_step_size=0.5, adapt_rate=0.5, smooth_window=None, safety=0.9, mask=None, progress_bar=True,
    batched=False,
) -> Array:
    """Step size per temperature ``[T + 1]`` from a forward run that nudges ``log eps``
    by ``adapt_rate * (acceptance - target)`` after every temperature (Wu et al. 2017).
    Entry ``t`` is the step size for the transition at ``betas[t]`` (entry 0 repeats entry 1).

    The adapted sequence is noisy and HMC on a near-Gaussian target has a sharp
    stability edge (acceptance falls to zero just above it), so the result is a
    moving average of ``log eps`` over ``smooth_window`` temperatures (default
    ``T / 20``) times a ``safety`` factor below one. ``batched``: see :func:`bdmc`."""
    keys = (jax.vmap(jax.random.split) if batched else jax.random.split)(key)
    init_key, key = keys[..., 0, :], keys[..., 1, :]
    init = _prior_particles(init_key, model, num_particles, batched)
    _, _, eps = _anneal(key, (model, x, y, mask), init, betas, jnp.zeros_like(betas), num_leapfrog=num_leapfrog,
                        num_mcmc_steps=num_mcmc_steps, adapt_rate=adapt_rate, target_accept=target_accept,
                        init_step_size=init_step_size, desc="AIS tuning", progress_bar=progress_bar)
    smooth = lambda e: _smooth_log(jnp.concatenate([e[:1], e]), smooth_window)
    return (jax.vmap(smooth) if batched else smooth)(eps) * safety


def _smooth_log(values: Array, window: int | None) -> Array:
    """Moving average of ``log values`` (edge-padded, so the length is kept)."""
    window = max(1, window or values.shape[0] // 20)  # static: a Python int
    logs = jnp.pad(jnp.log(values), (window // 2, window - 1 - window // 2), mode="edge")
    return jnp.exp(jnp.convolve(logs, jnp.ones(window, values.dtype) / window, mode="valid"))


def run(key, model, x, y, init, betas, step_sizes, *, num_leapfrog=10, num_mcmc_steps=1, mask=None,
        direction="forward", progress_bar=True, batched=False) -> AISResult:
    """Anneal particles ``init [K, P]`` (exact samples of ``f_{betas[0]}``) along ``betas [T + 1]``.

    Step ``t = 1..T`` adds ``(betas[t] - betas[t-1]) log p(D | theta)`` to the log
    weights, then applies HMC for ``f_{betas[t]}`` with ``step_sizes[t]``.
    ``direction`` says which bound ``log_z`` is: forward (``betas`` 0 -> 1, lower)
    or reverse (1 -> 0, upper). ``batched``: see :func:`bdmc`.
    """
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    ends = (0.0, 1.0) if direction == "forward" else (1.0, 0.0)
    if not (np.all(np.asarray(betas[..., 0]) == ends[0]) and np.all(np.asarray(betas[..., -1]) == ends[1])):
        raise ValueError(f"betas must run from {ends[0]} to {ends[1]} for {direction} AIS")
    if step_sizes.shape != betas.shape:
        raise ValueError(f"step_sizes must have the shape of betas {betas.shape}, got {step_sizes.shape}")
    (particles, log_w, _), accs, _ = _anneal(key, (model, x, y, mask), init, betas, step_sizes,
                                             num_leapfrog=num_leapfrog, num_mcmc_steps=num_mcmc_steps,
                                             desc=f"AIS {direction}", progress_bar=progress_bar)
    finite = np.isfinite(np.asarray(log_w))
    if not finite.all():
        where = f" in run {np.argwhere(~finite)[0, 0]}" if batched else ""
        raise FloatingPointError(f"{direction} AIS produced non-finite log weights{where}")
    return _summarise(log_w, accs, particles, direction)


def _summarise(log_w, accs, particles, direction) -> AISResult:
    """From log weights ``[..., K]`` (leading axes: a batch of runs)."""
    k = log_w.shape[-1]
    lme = jax.nn.logsumexp(log_w, -1) - math.log(k)
    w = jnp.exp(log_w - jnp.max(log_w, -1, keepdims=True))
    stderr = jnp.std(w, -1) / (math.sqrt(k) * jnp.mean(w, -1))
    ess = jnp.sum(w, -1) ** 2 / jnp.sum(w**2, -1)
    log_z = lme if direction == "forward" else -lme
    return AISResult(log_w, log_z, stderr, ess, accs, particles, direction)


class BDMCResult(NamedTuple):
    """Sandwich ``lower <= log p(D) <= upper`` (upper is a bound only from exact posterior samples)."""

    forward: AISResult
    reverse: AISResult | None
    step_sizes: Array
    betas: Array


SCHEDULES = ("geometric", "sigmoid")


def schedule(num_temps: int, kind: str = "geometric", dtype=None, beta_min: float = 1e-5) -> Array:
    """Temperatures ``[num_temps + 1]`` from exactly 0 to exactly 1.

    ``"geometric"``: 0, then log-spaced from ``beta_min`` to 1 (constant
    ``Delta beta / beta``, which suits near-Gaussian posteriors whose
    log-likelihood variance falls like ``1 / beta^2``); ``"sigmoid"``: delta 4
    (Grosse et al. 2015), whose first step is fixed at about ``7e-4 * 200 / T``.
    ``beta_min [B]`` gives one geometric schedule per run of a batch, ``[B, num_temps + 1]``.
    """
    if kind == "sigmoid":
        return sigmoid_schedule(num_temps, 4.0, dtype)
    if kind == "geometric":
        lo = np.asarray(beta_min, float)
        if num_temps < 1 or not np.all((0.0 < lo) & (lo < 1.0)):
            raise ValueError(f"need num_temps >= 1 and 0 < beta_min < 1, got {num_temps}, {beta_min}")
        logs = jnp.linspace(np.log10(lo), 0.0, num_temps, dtype=dtype, axis=-1)
        return jnp.concatenate([jnp.zeros(lo.shape + (1,), dtype), (10.0**logs).at[..., -1].set(1.0)], axis=-1)
    raise ValueError(f"schedule kind must be one of {SCHEDULES}, got {kind!r}")


def auto_beta_min(key, model, x, y, mask=None, num_draws: int = 256, batched: bool = False) -> float:
    """First temperature for the geometric path, from the data.

    Under the prior the log-likelihood has spread ``sd_0``; once the likelihood
    dominates, ``sd_beta ~ sqrt(P / 2) / beta``. The two meet at
    ``beta_c = sqrt(P / 2) / sd_0``; starting two decades below it keeps the first
    weight increments ``Delta beta * sd_0`` small however informative the data
    (with ``sigma_y = 0.01`` a fixed first step of ``1e-5`` would already add
    weight noise of several nats). ``batched``: one value per run, ``[B]`` (:func:`bdmc`).
    """
    if batched:
        spread = jax.vmap(_loglik_spread, (0, 0, 0, 0, 0, None))(key, model, x, y, mask, num_draws)
    else:
        spread = _loglik_spread(key, model, x, y, mask, num_draws)
    beta_c = math.sqrt(model.num_weights / 2) / np.maximum(np.asarray(spread, float), 1e-12)
    out = np.clip(beta_c / 100.0, 1e-12, 1e-3)
    return out if batched else float(out)


def _loglik_spread(key, model, x, y, mask, num_draws):
    thetas = _prior_particles(key, model, num_draws)
    return jnp.std(jax.vmap(lambda t: bnn.log_likelihood(model, bnn.unflatten(model, t), x, y, mask))(thetas))


def bdmc(key, model, x, y, *, num_temps=1000, num_particles=64, posterior_init=None, num_leapfrog=10,
         num_mcmc_steps=1, schedule_kind="geometric", beta_min=None, mask=None, progress_bar=True,
         batched=False) -> BDMCResult:
    """Bidirectional Monte Carlo: tune step sizes, run forward AIS from the prior and,
    if ``posterior_init [K, P]`` is given, reverse AIS from those posterior samples.

    ``beta_min`` (geometric schedule) defaults to :func:`auto_beta_min`. Tuning
    uses as many particles as the measured runs, so all three share one compiled
    program.

    ``batched=True``: ``B`` independent BDMC runs as one vmapped program per stage (tuning,
    forward, reverse): ``key [B, 2]``, ``model`` batched (every leaf ``[B, ...]``), ``x [B, N, D_0]``,
    ``y [B, N, D_L]``, ``mask [B, N]`` or None, ``posterior_init [B, K, P]``; each run has its
    own ``beta_min``, temperatures and tuned step sizes, and every result field gains the
    leading axis (``log_z [B]``, ``betas [B, T + 1]``)."""
    dtype = model.prior_means[0].dtype
    ks = (jax.vmap(lambda k: jax.random.split(k, 5)) if batched else lambda k: jax.random.split(k, 5))(key)
    kt, kf, kr, ki, kb = (ks[..., i, :] for i in range(5))
    if schedule_kind == "geometric" and beta_min is None:
        beta_min = auto_beta_min(kb, model, x, y, mask, batched=batched)
    betas = schedule(num_temps, schedule_kind, dtype, 1e-5 if beta_min is None else beta_min)
    if batched and betas.ndim == 1:  # one schedule for every run
        betas = jnp.broadcast_to(betas, (ks.shape[0],) + betas.shape)
    common = dict(num_leapfrog=num_leapfrog, num_mcmc_steps=num_mcmc_steps, mask=mask, progress_bar=progress_bar)
    eps = tune_step_sizes(kt, model, x, y, betas, num_particles=num_particles, batched=batched, **common)
    init = _prior_particles(ki, model, num_particles, batched)
    fwd = run(kf, model, x, y, init, betas, eps, direction="forward", batched=batched, **common)
    rev = None
    if posterior_init is not None:
        rev = run(kr, model, x, y, posterior_init, betas[..., ::-1], eps[..., ::-1], direction="reverse",
                  batched=batched, **common)
    return BDMCResult(fwd, rev, eps, betas)


def tile_init(theta: Array, num_particles: int) -> Array:
    """Start every reverse-AIS particle from one exact posterior sample ``theta [P]`` -> ``[K, P]``
    (each chain is still an unbiased estimator of ``1 / p(D)``)."""
    return jnp.broadcast_to(theta, (num_particles,) + theta.shape)


def as_numpy(result: AISResult) -> dict:
    """Plain floats for reports."""
    return {"log_z": float(result.log_z), "stderr": float(result.stderr), "ess": float(result.ess),
            "mean_accept": float(np.mean(result.accept_rate)), "direction": result.direction}
