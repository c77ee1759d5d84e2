"""Fitting the MetaPrior: joint or EM-style training, illation and structured surgery.

- :func:`fit` maximises the ELBO of :mod:`bnnp_jax.metaprior.model` (paper eq. 3) with
  Adam over two parameter groups, the codes ``Q(Z)`` and the model (hypernetwork
  and noise). ``em_period > 0`` alternates blocks of steps that update only one
  group (paper sec. 4, "two-stage learning procedure, similar to EM"); the other
  group's parameters and optimiser state are left exactly as they are.
- Illation (paper sec. 4 / 5.4): keep ``g`` fixed and re-fit ``Q(Z)`` on a new
  task, starting from the trained codes. Structured surgery (paper sec. 6)
  re-fits only the input-unit or only the output-unit codes through a boolean
  mask over the code pytree; masked-out codes are selected with ``jnp.where``
  and so stay bit-identical.
- Code variants (``MetaPriorConfig.codes``): ``point`` codes are fitted, illated and
  masked like the means of ``Q(Z)`` (there is no ``log_std``, no code prior and so no
  ``prior='posterior'`` illation); ``one_hot`` has no codes, so there is nothing to
  illate (ValueError) and no E-phase for ``em_period`` (ValueError).

Training runs ``lax.scan`` over chunks of steps inside one jitted function
(cached on the static config) with a tqdm bar over chunks.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from bnnp_jax.core.driver import run_chunks
from bnnp_jax.metaprior import codes as mc
from bnnp_jax.metaprior import model as mp

__all__ = ["CODE_SUBSETS", "FitConfig", "code_mask", "chunked_scan", "learning_rate", "apply_step", "fit",
           "illate"]

Array = jax.Array
CODE_SUBSETS = ("all", "input", "output", "hidden", "none")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """``batch_size = 0`` means full batch; ``em_period = 0`` means joint updates;
    ``kl_warmup > 0`` ramps the code-KL weight linearly from 0 to 1 over that many
    steps (Adam normalises gradients, so an unweighted KL widens ``Q(Z)`` before ``g``
    has learned to use the codes); the recorded trace is always the true ELBO.
    ``lr_end`` switches the constant Adam step size to a cosine decay from ``lr`` to ``lr_end``."""

    steps: int = 2000
    lr: float = 1e-2
    batch_size: int = 0
    num_samples: int = 4
    em_period: int = 0
    kl_warmup: int = 0
    lr_end: float | None = None
    chunk: int = 100

    def __post_init__(self):
        for name in ("steps", "chunk", "num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_end is not None and self.lr_end <= 0:
            raise ValueError(f"lr_end must be positive or None, got {self.lr_end}")
        if self.lr <= 0 or min(self.batch_size, self.em_period, self.kl_warmup) < 0:
            raise ValueError(f"need lr > 0 and batch_size, em_period, kl_warmup >= 0; got "
                             f"{self.lr}, {self.batch_size}, {self.em_period}, {self.kl_warmup}")


def code_mask(codes: mc.Codes | None, which: str = "all") -> mc.Codes | None:
    """Boolean mask pytree (scalar per leaf) marking the codes to re-fit, with the structure
    of ``codes`` (``log_std`` None for point codes; ``codes=None``, one-hot, gives None).

    ``which``: ``all`` | ``input`` (layer 0) | ``output`` (layer L) | ``hidden``
    (layers 1..L-1) | ``none``. The global code is trainable only under ``all``.
    """
    if which not in CODE_SUBSETS:
        raise ValueError(f"which must be one of {CODE_SUBSETS}, got {which!r}")
    if codes is None:
        return None
    last = len(codes.units) - 1
    pick = {"all": lambda l: True, "input": lambda l: l == 0, "output": lambda l: l == last,
            "hidden": lambda l: 0 < l < last, "none": lambda l: False}[which]

    def like(q: mc.CodeQ, on: bool) -> mc.CodeQ:
        return mc.CodeQ(jnp.asarray(on), None if q.log_std is None else jnp.asarray(on))

    units = tuple(like(q, pick(l)) for l, q in enumerate(codes.units))
    return mc.Codes(units, like(codes.glob, which == "all"))


def _select(pred, new, old):
    """Per-leaf ``where(pred, new, old)``; ``pred`` is a matching pytree or one scalar."""
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(pred)):
        return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)
    return jax.tree.map(lambda p, n, o: jnp.where(p, n, o), pred, new, old)


def chunked_scan(step: Callable, carry, key: Array, steps: int, chunk: int, progress: bool = True,
                 desc: str = "fit") -> tuple:
    """Drive ``carry, metrics = step(carry, keys [n], ts [n])`` (a jitted ``lax.scan`` over
    ``n <= chunk`` steps) for ``steps`` steps with a tqdm bar over chunks.
    Returns ``(carry, metrics [steps])``."""
    keys = jax.random.split(key, -(-steps // chunk))
    run = lambda c, start, n: step(c, jax.random.split(keys[start // chunk], n), jnp.arange(start, start + n))  # noqa: E731
    carry, metrics = run_chunks(run, carry, steps, chunk, desc=desc, progress=progress,
                                postfix=lambda m, n, sec: {"value": f"{float(m[-1]):.4g}"})
    return carry, jnp.concatenate(metrics)


def _optimizer(fcfg: FitConfig) -> optax.GradientTransformation:
    """Adam's direction only; the step size is applied by :func:`apply_step` (its schedule needs
    the run length, which is a traced argument so that runs of any length share one compile)."""
    return optax.scale_by_adam()


def learning_rate(fcfg: FitConfig, t: Array, total: Array) -> Array:
    """``lr`` or, with ``lr_end``, a cosine decay from ``lr`` at ``t = 0`` to ``lr_end`` at ``total - 1``."""
    if fcfg.lr_end is None:
        return jnp.asarray(fcfg.lr)
    frac = jnp.clip(t / jnp.maximum(total - 1, 1), 0.0, 1.0)
    return fcfg.lr_end + (fcfg.lr - fcfg.lr_end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


def apply_step(params, direction, lr: Array):
    """``params - lr * direction`` leaf by leaf."""
    return jax.tree.map(lambda p, d: p - lr * d, params, direction)


@partial(jax.jit, static_argnames=("config", "fcfg", "train_model"))
def _run_chunk(carry, keys, ts, x, y, weight, mask, code_prior, total, *, config, fcfg, train_model):
    """``carry = (params, code_opt_state, model_opt_state)``; returns (carry, ELBO / N per step)."""
    opt = _optimizer(fcfg)
    n_total = jnp.sum(weight)

    def loss(params, key, t):
        k_b, k_e = jax.random.split(key)
        if fcfg.batch_size and fcfg.batch_size < x.shape[0]:
            idx = jax.random.randint(k_b, (fcfg.batch_size,), 0, x.shape[0])
            value, ell = mp.elbo(k_e, params, config, x[idx], y[idx], weight[idx],
                                 n_total / jnp.maximum(jnp.sum(weight[idx]), 1.0), fcfg.num_samples, code_prior)
        else:
            value, ell = mp.elbo(k_e, params, config, x, y, weight, 1.0, fcfg.num_samples, code_prior)
        beta = jnp.minimum(1.0, (t + 1.0) / fcfg.kl_warmup) if fcfg.kl_warmup else 1.0
        # per-point scale keeps the learning rate data-size free
        return -(ell - beta * (ell - value)) / n_total, value / n_total

    def step(carry, inp):
        params, s_codes, s_model = carry
        key, t = inp
        if train_model:
            (_, value), grads = jax.value_and_grad(loss, has_aux=True)(params, key, t)
        else:  # illation: no backward pass into g
            (_, value), g_codes = jax.value_and_grad(
                lambda c: loss(params._replace(codes=c), key, t), has_aux=True)(params.codes)
            grads = mp.MetaPriorParams(g_codes, None, None)
        em = fcfg.em_period > 0 and train_model
        codes_on = (t // fcfg.em_period) % 2 == 0 if em else jnp.asarray(True)  # E-phase first
        lr = learning_rate(fcfg, t, total)
        up_c, new_sc = opt.update(grads.codes, s_codes, params.codes)
        codes = _select(mask, apply_step(params.codes, up_c, lr), params.codes)
        codes = _select(codes_on, codes, params.codes)
        s_codes = _select(codes_on, new_sc, s_codes)
        model = (params.hyper, params.raw_sigma)
        if train_model:
            model_on = jnp.logical_not(codes_on) if em else jnp.asarray(True)
            up_m, new_sm = opt.update((grads.hyper, grads.raw_sigma), s_model, model)
            model = _select(model_on, apply_step(model, up_m, lr), model)
            s_model = _select(model_on, new_sm, s_model)
        return (mp.MetaPriorParams(codes, *model), s_codes, s_model), value

    return jax.lax.scan(step, carry, (keys, ts))


def fit(key: Array, params: mp.MetaPriorParams, config: mp.MetaPriorConfig, fcfg: FitConfig,
        x: Array, y: Array, weight: Array | None = None, *, which_codes: str = "all",
        train_model: bool = True, code_prior: mc.Codes | None = None, progress: bool = True,
        desc: str = "metaprior") -> tuple:
    """Maximise the ELBO. ``x [N, D_0]``, ``y [N, D_L]`` or labels ``[N]``, ``weight [N]``
    (padding mask); ``code_prior`` replaces ``p(Z) = N(0, I)`` (``codes='latent'`` only).
    ``codes='one_hot'`` needs ``train_model=True`` and ``em_period=0`` (it has no codes).
    Returns ``(params, elbo_per_point [steps])``."""
    if x.ndim != 2 or x.shape[1] != config.widths[0]:
        raise ValueError(f"x must be [N, {config.widths[0]}], got {x.shape}")
    if config.codes == "one_hot" and not train_model:
        raise ValueError("train_model=False fits only the codes, and codes='one_hot' has none to fit")
    if config.codes == "one_hot" and fcfg.em_period:
        raise ValueError(f"em_period must be 0 with codes='one_hot' (no codes for the E-phase), got {fcfg.em_period}")
    if code_prior is not None and config.codes != "latent":
        raise ValueError(f"code_prior needs codes='latent', got codes={config.codes!r}")
    if (params.codes is None) != (config.codes == "one_hot"):
        raise ValueError(f"params.codes must be None exactly when codes='one_hot' (config.codes={config.codes!r}); "
                         f"were params made by init with this config?")
    weight = jnp.ones(x.shape[0], x.dtype) if weight is None else jnp.asarray(weight, x.dtype)
    mask = code_mask(params.codes, which_codes)
    opt = _optimizer(fcfg)
    carry = (params, opt.init(params.codes), opt.init((params.hyper, params.raw_sigma)))
    # steps and chunk only drive the host loop: normalise them so runs of any length share one compile
    static = dataclasses.replace(fcfg, steps=1, chunk=1)
    run = partial(_run_chunk, x=x, y=y, weight=weight, mask=mask, code_prior=code_prior,
                  total=jnp.asarray(fcfg.steps, x.dtype), config=config, fcfg=static, train_model=train_model)
    (params, _, _), trace = chunked_scan(run, carry, key, fcfg.steps, fcfg.chunk, progress, desc)
    return params, trace


def illate(key: Array, params: mp.MetaPriorParams, config: mp.MetaPriorConfig, fcfg: FitConfig,
           x: Array, y: Array, weight: Array | None = None, which: str = "all",
           prior: str = "standard", progress: bool = False) -> tuple:
    """Re-fit ``Q(Z)`` (all codes, or ``which`` = ``input`` / ``output`` / ``hidden``) for a new
    task with the hypernetwork fixed, starting from ``params.codes`` (paper sec. 4, 6).
    ``prior``: ``standard`` keeps the paper's ``p(Z) = N(0, I)``; ``posterior`` uses the
    starting ``Q(Z)`` as the new task's prior (a sequential Bayesian update).
    ``codes='point'``: re-fits the point estimates (maximum likelihood; ``prior`` must be
    ``standard``, which then means no prior). ``codes='one_hot'`` cannot be illated (ValueError).
    Returns ``(params, elbo_per_point [steps])``; ``params.hyper`` is returned unchanged."""
    if prior not in ("standard", "posterior"):
        raise ValueError(f"prior must be 'standard' or 'posterior', got {prior!r}")
    if config.codes == "one_hot":
        raise ValueError("codes='one_hot' cannot be illated: its codes are fixed one-hot vectors and g is frozen "
                         "during illation, so nothing would be re-fitted")
    if prior == "posterior" and config.codes != "latent":
        raise ValueError(f"prior='posterior' needs codes='latent' (codes={config.codes!r} has no Q(Z) to use as "
                         f"a prior)")
    code_prior = params.codes if prior == "posterior" else None
    return fit(key, params, config, fcfg, x, y, weight, which_codes=which, train_model=False,
               code_prior=code_prior, progress=progress, desc=f"illate[{which}]")
