"""Task families by name: samplers with bound settings, defaults, true function draws.

``make_sampler(name, n_max=None, n_range=None, **params)`` returns
``sampler(key, num_tasks) -> (x [T, n_max, x_dim], y [T, n_max, y_dim], mask [T, n_max])``;
``num_tasks`` is a shape, so jit it as ``jax.jit(sampler, static_argnums=1)``.
``make_batch_sampler`` adds the context/target split of SPEC section 5 and
returns a :class:`~bnnp_jax.data.tasks.TaskBatch`. Defaults follow SPEC
section 11 (1-D prior learning: ``N in [40, 100)``, context share ``U(0.1, 0.5)``).
"""

from __future__ import annotations

import inspect
from typing import Callable

import jax
import jax.numpy as jnp

from bnnp_jax.data import images as image_data
from bnnp_jax.data import precipitation, synthetic
from bnnp_jax.data.tasks import TaskBatch, split

__all__ = ["FAMILIES", "reads_dataset", "family_params", "family_info", "make_sampler",
           "make_batch_sampler", "true_function_samples"]

Array = jax.Array
_CTX = (0.1, 0.5)


def _info(x_dim, y_dim, x_range, n_range, activation="relu", beta=1.0, context=_CTX):
    return {"x_dim": x_dim, "y_dim": y_dim, "x_range": x_range, "n_range": n_range, "n_max": n_range[1] - 1,
            "context_proportion": context, "activation": activation, "beta": beta}


_INFO = {
    "sawtooth": _info(1, 1, (-2.0, 2.0), (40, 100)),
    "heaviside": _info(1, 1, (-5.0, 5.0), (40, 100), activation="tanh", beta=0.1),
    "bnn_prior": _info(1, 1, (-2.0, 2.0), (40, 100)),
    "gp": _info(1, 1, (-2.0, 2.0), (40, 100)),
    "cubic": _info(1, 1, (-4.0, 4.0), (20, 21)),
    "ecg": _info(1, 1, (-3.0, 3.0), (200, 601)),
    "digits": _info(2, 1, (-1.0, 1.0), (32, 65)),
    "precipitation": _info(3, 1, (-1.0, 1.0), (100, 201)),
    "era5": _info(3, 1, (-1.0, 1.0), (100, 201)),
}


def _sample_digits(key, num_tasks, n_max, n_range, images=None, split="train", test_fraction=0.2, seed=0,
                   dtype=None):
    """Digits pixel regression; ``images [I, H, W]`` overrides the bundled digits (e.g. MNIST)."""
    del split, test_fraction, seed, dtype  # consumed by _prepare_digits
    return image_data.sample_images(key, images, num_tasks, n_max, n_range)


def _sample_era5(key, num_tasks, n_max, n_range, path=None, data=None, precip_var="tp", temp_var="t2m",
                 engine="auto", dtype=None):
    """ERA5 tasks from ``path`` (or preloaded ``data``: an Era5Data)."""
    del path, precip_var, temp_var, engine, dtype  # consumed by _prepare_era5
    return synthetic.sample_from_pool(key, jnp.asarray(data.x), jnp.asarray(data.y), jnp.asarray(data.valid),
                                      num_tasks, n_max, n_range)


def _prepare_digits(params: dict) -> dict:
    if params.get("images") is None:
        keys = ("split", "test_fraction", "seed", "dtype")
        params["images"] = image_data.digits_split(**{k: params[k] for k in keys if k in params})[0]
    params["images"] = jnp.asarray(params["images"])
    return params


def _prepare_era5(params: dict) -> dict:
    if params.get("data") is None:
        if params.get("path") is None:
            raise ValueError("family 'era5' needs path= (an ERA5 NetCDF file) or data= (an Era5Data)")
        keys = ("precip_var", "temp_var", "engine", "dtype")
        params["data"] = precipitation.load_era5(params["path"], **{k: params[k] for k in keys if k in params})
    return params


FAMILIES: dict[str, Callable] = {
    "sawtooth": synthetic.sample_sawtooth,
    "heaviside": synthetic.sample_heaviside,
    "bnn_prior": synthetic.sample_bnn_prior,
    "gp": synthetic.sample_gp,
    "cubic": synthetic.sample_cubic,
    "ecg": synthetic.sample_ecg,
    "digits": _sample_digits,
    "precipitation": precipitation.sample_precipitation,
    "era5": _sample_era5,
}
_PREPARE = {"digits": _prepare_digits, "era5": _prepare_era5}


def reads_dataset(name: str) -> bool:
    """Whether building ``name``'s sampler reads a dataset (so config checks stop at parameter names)."""
    return name in _PREPARE


def _check_name(name: str, valid) -> None:
    if name not in valid:
        raise ValueError(f"unknown task family {name!r}; valid families: {sorted(valid)}")


def family_params(name: str) -> dict:
    """The family's keyword parameters and their defaults."""
    _check_name(name, FAMILIES)
    sig = inspect.signature(FAMILIES[name])
    skip = ("key", "num_tasks", "n_max", "n_range")
    return {k: p.default for k, p in sig.parameters.items() if k not in skip}


def family_info(name: str) -> dict:
    """Defaults for a family: ``x_dim, y_dim, x_range, n_range, n_max, context_proportion,
    activation, beta`` (the BNN activation and KL weight SPEC section 11 uses for it)."""
    _check_name(name, _INFO)
    return dict(_INFO[name])


def make_sampler(name: str, n_max: int | None = None, n_range: tuple[int, int] | None = None, **params):
    """``sampler(key, num_tasks) -> (x, y, mask)`` with sizes and family params bound.

    ``n_range`` defaults to :func:`family_info`'s, ``n_max`` to ``n_range[1] - 1``.
    Unknown names or parameters raise ValueError naming the valid options;
    bad values raise here too (the sampler is traced once, abstractly).
    """
    valid = family_params(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for family {name!r}; valid: {sorted(valid)}")
    n_range = tuple(family_info(name)["n_range"] if n_range is None else n_range)
    n_max = n_range[1] - 1 if n_max is None else int(n_max)
    params = _PREPARE.get(name, lambda p: p)(dict(params))
    fn = FAMILIES[name]

    def sampler(key: Array, num_tasks: int):
        return fn(key, num_tasks, n_max, n_range, **params)

    jax.eval_shape(lambda k: sampler(k, 1), jax.random.PRNGKey(0))
    return sampler


def make_batch_sampler(name: str, context_proportion: tuple[float, float] | None = None, **kwargs):
    """``sampler(key, num_tasks) -> TaskBatch`` with a random context/target split (SPEC section 5)."""
    proportion = tuple(family_info(name)["context_proportion"] if context_proportion is None else context_proportion)
    if not 0.0 <= proportion[0] <= proportion[1] <= 1.0:
        raise ValueError(f"context_proportion must satisfy 0 <= a <= b <= 1, got {proportion}")
    base = make_sampler(name, **kwargs)

    def sampler(key: Array, num_tasks: int) -> TaskBatch:
        k_tasks, k_split = jax.random.split(key)
        return split(k_split, *base(k_tasks, num_tasks), proportion)

    return sampler


def true_function_samples(key: Array, name: str, x_grid: Array, num: int, **params) -> Array:
    """Noise-free function draws ``[num, G, y_dim]`` of a 1-D family on ``x_grid [G, x_dim]``.

    ``params`` are the family's function parameters (e.g. ``lengthscale`` for
    gp/heaviside, ``hidden``/``activation`` for bnn_prior, ``scale`` for cubic);
    sampling-only ones (``noise``, ``x_range``, ...) are not accepted.
    """
    _check_name(name, synthetic.DRAWS)
    draw = synthetic.DRAWS[name]
    valid = [k for k in inspect.signature(draw).parameters if k not in ("key", "x")]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {name!r} function draws; valid: {valid}")
    x_grid = jnp.asarray(x_grid)
    if x_grid.ndim != 2:
        raise ValueError(f"x_grid must have shape [G, x_dim], got {x_grid.shape}")
    if int(num) < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    return _draws(key, x_grid, draw=draw, num=int(num), params=tuple(sorted(params.items())))


@synthetic.jit_sampler(traced=("key", "x_grid"))
def _draws(key, x_grid, draw, num, params):
    return jax.vmap(lambda k: draw(k, x_grid, **dict(params)))(jax.random.split(key, num))
