"""The ``(seed, sigma_y)`` grid of the KL table (SPEC sections 10, 11): each seed's dataset drawn
from the BNN prior, the grid as one padded batch (:class:`Grid`), and the per-element keys.

A grid element is one dataset seed at one model ``sigma_y``; the table's methods and evidence
run over all of them as one batch axis, like tasks.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.core.minibatch import pad_rows
from bnnp_jax.studies.kl_table_config import METHODS, KLTableConfig

__all__ = ["Grid", "simulate", "grid", "element_keys"]


def simulate(cfg: KLTableConfig, seed: int | None = None):
    """One dataset of ``seed`` (default ``cfg.seeds[0]``): generating weights (flat ``[P]``),
    inputs ``x [N, D_0]``, noiseless outputs ``f`` and the standard-normal noise draws
    ``eps [N, D_L]`` (``y = f + noise * eps``)."""
    from bnnp_jax.inference import model as bnn

    prior_model = bnn.fixed_prior_model(cfg.widths, cfg.activation, 1.0)
    seed = cfg.seeds[0] if seed is None else seed
    kn, kx, kw, ke = jax.random.split(jax.random.PRNGKey(seed), 4)
    n = int(jax.random.randint(kn, (), cfg.n_range[0], cfg.n_range[1]))
    x = jax.random.uniform(kx, (n, cfg.widths[0]), minval=cfg.x_range[0], maxval=cfg.x_range[1])
    w = bnn.prior_sample(kw, prior_model)
    return bnn.flatten(w), x, bnn.forward(w, x, cfg.activation), jax.random.normal(ke, (n, cfg.widths[-1]))


class Grid(NamedTuple):
    """The ``(seed, sigma_y)`` batch, ``B = len(seeds) * len(sigma_grid)``, seed-major
    (element ``i``: seed ``i // G``, ``sigma_y`` ``i % G``).

    Attributes:
      seeds, sigmas, sizes: ``[B]`` the dataset's seed, the model's ``sigma_y``, ``N``.
      models: the :class:`BNNModel` s stacked (every leaf ``[B, ...]``; they differ in ``sigma_y``).
      x, y, mask: ``[B, N, D_0]``, ``[B, N, D_L]``, ``[B, N]``: datasets padded to the largest ``N``.
      w_true: ``[B, P]`` generating weights.
      keys: ``[B, 2]`` per element (``PRNGKey(seed + 1)`` split over the grid, as for one seed).
    """

    seeds: np.ndarray
    sigmas: np.ndarray
    sizes: np.ndarray
    models: object
    x: jax.Array
    y: jax.Array
    mask: jax.Array
    w_true: jax.Array
    keys: jax.Array

    def subset(self, idx) -> "Grid":
        """The elements ``idx`` (indices into the batch), padding unchanged."""
        idx = np.asarray(idx)
        return Grid(self.seeds[idx], self.sigmas[idx], self.sizes[idx], jax.tree.map(lambda a: a[idx], self.models),
                    self.x[idx], self.y[idx], self.mask[idx], self.w_true[idx], self.keys[idx])

    def key(self, i: int) -> tuple[int, float]:
        """Element ``i``'s ``(seed, sigma_y)``: how records, the resume and the NUTS cache name it."""
        return int(self.seeds[i]), float(self.sigmas[i])

    def element(self, i: int):
        """Element ``i`` unpadded: ``(model, x [N_i, D_0], y [N_i, D_L], w_true [P])``."""
        n = int(self.sizes[i])
        model = jax.tree.map(lambda a: a[i], self.models)
        return model, self.x[i, :n], self.y[i, :n], self.w_true[i]


def grid(cfg: KLTableConfig) -> Grid:
    """The batch of every seed's dataset at every ``sigma_y`` (:class:`Grid`)."""
    from bnnp_jax.inference import model as bnn

    sigmas = cfg.sigma_grid()
    data = [simulate(cfg, s) for s in cfg.seeds]
    n_max = max(d[1].shape[0] for d in data)
    pad = lambda a: pad_rows(a, n_max)
    x, y, mask, w, keys = [], [], [], [], []
    for seed, (w_true, xs, f, eps) in zip(cfg.seeds, data):
        keys.append(jax.random.split(jax.random.PRNGKey(seed + 1), len(sigmas)))
        for sigma in sigmas:
            noise = sigma if cfg.mode == "certified" else cfg.data_noise
            x.append(pad(xs))
            y.append(pad(f + noise * eps))
            mask.append(jnp.arange(n_max) < xs.shape[0])
            w.append(w_true)
    model = bnn.fixed_prior_model(cfg.widths, cfg.activation, 1.0)
    b = len(x)
    models = jax.tree.map(lambda a: jnp.broadcast_to(a, (b,) + a.shape), model)
    dtype = model.prior_means[0].dtype
    sig = jnp.asarray(np.tile(sigmas, len(cfg.seeds)), dtype)
    models = dataclasses.replace(models, sigma_y=jnp.broadcast_to(sig[:, None], (b, cfg.widths[-1])))
    return Grid(np.repeat(cfg.seeds, len(sigmas)), np.tile(sigmas, len(cfg.seeds)),
                np.repeat([d[1].shape[0] for d in data], len(sigmas)), models, jnp.stack(x), jnp.stack(y),
                jnp.stack(mask).astype(dtype), jnp.stack(w), jnp.concatenate(keys))


def element_keys(g: Grid, method: str | None):
    """Per-element keys ``[B, 2]``: the evidence's (``method=None``), or a method's fit and ELBO
    keys, fixed by the method's name (not its place in the config, so reruns match)."""
    parts = jax.vmap(jax.random.split)(g.keys)
    if method is None:
        return parts[:, 0]
    k = jax.vmap(lambda k: jax.random.fold_in(k, METHODS.index(method)))(parts[:, 1])
    both = jax.vmap(jax.random.split)(k)
    return both[:, 0], both[:, 1]
