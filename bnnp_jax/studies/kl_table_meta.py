"""The meta-BNNP column of the KL table (``bnnp_amortised``): a BNNP meta-trained with the
table's fixed prior (``configs/kl_meta_bnnp.yaml``), loaded from its run directory and
scored zero-shot under the table's model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.config import ConfigError
from bnnp_jax.studies.kl_table_config import KLTableConfig

__all__ = ["load_meta_bnnp", "amortised_elbo"]


def load_meta_bnnp(cfg: KLTableConfig):
    """The meta-trained BNNP of ``cfg.bnnp_checkpoint`` (a ``bnnp train`` run directory, e.g.
    one trained on ``configs/kl_meta_bnnp.yaml``): its newest checkpoint's parameters,
    checked against the table's model. Errors name the config field.

    ``KL = log p(D) - ELBO`` needs the ELBO under the table's model, so the BNNP must have
    the table's widths and activation and its prior must still be the table's fixed prior
    ``N(0, I / (D_in + 1))`` (meta-train with ``training.prior_fraction: 0``)."""
    from bnnp_jax.training import checkpoint
    from bnnp_jax.training import config as run_config
    from bnnp_jax.training import loop as train
    from bnnp_jax.inference import model as bnn

    field = "bnnp_checkpoint"
    if not cfg.bnnp_checkpoint:
        raise ConfigError(f"{field}: bnnp_amortised needs the run directory of a meta-trained BNNP "
                          "(`bnnp train configs/kl_meta_bnnp.yaml --out DIR`)")
    run_dir = Path(cfg.bnnp_checkpoint).expanduser()
    if not run_dir.exists():
        raise ConfigError(f"{field}: {run_dir} does not exist (give the --out directory of "
                          "`bnnp train configs/kl_meta_bnnp.yaml`)")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{field}: {run_dir} is not a BNNP run directory (no config.yaml; give the --out "
                          "directory of `bnnp train`, not a checkpoint file)")
    try:
        run_cfg = run_config.load(run_dir / "config.yaml")
    except ConfigError as e:
        raise ConfigError(f"{field}: {run_dir}/config.yaml: {e}") from e
    if run_cfg.model != "bnnp":
        raise ConfigError(f"{field}: {run_dir} holds a {run_cfg.model!r} run; bnnp_amortised needs a bnnp run")
    if run_cfg.bnnp.dtype == "float64" and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise ConfigError(f"{field}: {run_dir} is a float64 run; set float64: true in the table config")
    try:
        _, params, _ = train.load_run(run_dir)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"{field}: {e}") from e
    table = bnn.fixed_prior_model(cfg.widths, cfg.activation, 1.0)
    own = bnn.from_bnnp(params)
    if tuple(own.widths) != tuple(table.widths) or own.activation != table.activation:
        raise ConfigError(f"{field}: {run_dir} has widths {list(own.widths)} and activation {own.activation!r}; "
                          f"the table's model has {list(table.widths)} and {table.activation!r}")
    same_prior = all(np.allclose(a, b) for a, b in zip(own.prior_means + own.prior_scale_trils,
                                                       table.prior_means + table.prior_scale_trils))
    if not same_prior:
        raise ConfigError(f"{field}: the prior of {run_dir} is not the table's fixed prior N(0, I/(D_in+1)); "
                          "meta-train with training.prior_fraction: 0 (and no hinge_range or prior_min_std)")
    return params


def amortised_elbo(key, params, model, x, y, cfg: KLTableConfig):
    """Zero-shot ELBO of the meta-trained BNNP ``params`` (:func:`load_meta_bnnp`) on ``(x, y)``
    under the table's model: the BNNP's ``sigma_y`` is set to the model's (an unbounded one,
    whatever bound it trained with, since the grid runs past any such bound)."""
    from bnnp_jax.inference import bnnp_methods

    dtype = params.likelihood["raw_sigma"].dtype
    raw = jnp.broadcast_to(jnp.log(jnp.asarray(model.sigma_y, dtype)), params.likelihood["raw_sigma"].shape)
    params = params.replace(config=dataclasses.replace(params.config, sigma_y_bound=None),
                            likelihood={"raw_sigma": raw})
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    return bnnp_methods.amortised_elbo(key, bnnp_methods.amortised_fit(key, params, x, y), cfg.elbo_samples)
