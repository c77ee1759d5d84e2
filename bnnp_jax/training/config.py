"""The configuration of a meta-training run (``configs/*.yaml``).

``model`` picks the adapter (:mod:`bnnp_jax.training.models`) and with it the section
that holds the architecture: ``bnnp`` for the BNNP, ``np`` for the neural
processes (cnp, np, anp, tnp), ``bnam`` for the attention model. The other
sections keep their defaults and are ignored. ``data: null`` makes a config
for code that supplies its own task sampler (the studies, ``train.fit(..., sampler=...)``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from bnnp_jax.training import models
from bnnp_jax.bnnp import objectives
from bnnp_jax.priors import weight_prior as priors
from bnnp_jax.bnnp.bnam import BNAMConfig
from bnnp_jax.bnnp.model import BNNPConfig
from bnnp_jax.config import ConfigError, from_dict, load_yaml
from bnnp_jax.neural_processes import NPConfig

__all__ = ["MODELS", "SEED_LIMIT", "DataConfig", "WarmStartConfig", "TrainingConfig", "RunConfig", "load",
           "override"]

MODELS = models.NAMES
SEED_LIMIT = 2**32  # jax.random.PRNGKey keeps the low 32 bits (without x64): seed 2**32 would be seed 0


@dataclass(frozen=True)
class DataConfig:
    """Task family and sizes. ``params`` are the family's own settings
    (see ``bnnp_jax.data.registry.family_params``)."""

    family: str = "sawtooth"
    n_range: tuple[int, ...] | None = None
    context_proportion: tuple[float, ...] | None = None
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        from bnnp_jax.data import registry

        if self.family not in registry.FAMILIES:
            raise ConfigError(f"data.family: unknown family {self.family!r}; valid: {sorted(registry.FAMILIES)}")
        if self.n_range is not None and (len(self.n_range) != 2 or not 1 <= self.n_range[0] < self.n_range[1]):
            raise ConfigError(f"data.n_range: need [lo, hi] with 1 <= lo < hi, got {list(self.n_range)}")
        cp = self.context_proportion
        if cp is not None and (len(cp) != 2 or not 0.0 <= cp[0] <= cp[1] <= 1.0):
            raise ConfigError(f"data.context_proportion: need [a, b] with 0 <= a <= b <= 1, got {list(cp)}")
        _check_family_params(self)


def _check_family_params(data: "DataConfig") -> None:
    """``data.params`` checked at load, not at the first training step: the names
    against the family's signature, the values by building the sampler (one
    abstract trace). Families that read a dataset to build their sampler
    (digits, era5) get the name check only, so loading a config reads no data."""
    from bnnp_jax.data import registry

    valid = registry.family_params(data.family)
    unknown = sorted(set(data.params) - set(valid))
    if unknown:
        raise ConfigError(f"data.params: unknown parameter(s) {unknown} for family {data.family!r}; "
                          f"valid: {sorted(valid)}")
    if registry.reads_dataset(data.family):
        return
    kw = dict(data.params)
    if data.n_range is not None:
        kw["n_range"] = tuple(data.n_range)
    try:
        registry.make_sampler(data.family, **kw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"data.params: {e}") from e


@dataclass(frozen=True)
class WarmStartConfig:
    """``training.warm_start``: empirical-Bayes warm start of the BNNP prior mean
    (:mod:`bnnp_jax.bnnp.warm_start`, docs/sawtooth.md).

    A deterministic network is fitted to the pooled points of ``tasks``
    meta-training tasks (``fit_steps`` of full-batch Adam at ``fit_lr``, first-layer
    hinges spread over ``bnnp.hinge_range`` or else the family's input range); its
    weights become the prior means and the prior standard deviations are scaled by
    ``hidden_std_scale`` / ``output_std_scale``. Then the inference networks (and
    sigma_y) train for ``warmup_steps`` with the prior frozen, learning rate
    ``warmup_lr`` decaying linearly to ``training.lr_end``.
    """

    tasks: int = 256
    fit_steps: int = 3000
    fit_lr: float = 3e-3
    hidden_std_scale: float = 0.1
    output_std_scale: float = 0.3
    warmup_steps: int = 600
    warmup_lr: float = 1e-3

    def __post_init__(self):
        def bad(name, problem):
            raise ConfigError(f"training.warm_start.{name}: {problem}")

        for name in ("tasks", "fit_steps"):
            if getattr(self, name) < 1:
                bad(name, f"must be a positive integer, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            bad("warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        for name in ("fit_lr", "hidden_std_scale", "output_std_scale", "warmup_lr"):
            if not 0 < getattr(self, name) < math.inf:
                bad(name, f"must be > 0 and finite, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, evaluation and checkpointing settings (SPEC section 5).

    ``objective``, ``beta`` and ``batch_size`` apply to the models with a weight
    prior (bnnp, bnam; ``batch_size`` to the bnnp only); the neural processes
    train on their own ``np.objective``. ``num_samples`` is the number of
    weight paths, or of latent draws for np/anp. ``context_buckets`` (bnnp) pads
    each task's context to the smallest of that many sizes that holds it
    (:func:`bnnp_jax.bnnp.objectives.batch_terms`): fewer compile faster, more run
    faster; 1 pads every task to the largest context. ``train_prior_mean: false``
    meta-learns only the prior covariances; ``warm_start`` (bnnp only,
    :class:`WarmStartConfig`) sets the prior mean from a pooled fit first.
    ``prior_step_scale: fan_in`` scales Adam's step on the prior means and on the
    strictly-lower Cholesky entries by ``1 / sqrt(D_in + 1)``
    (:func:`bnnp_jax.priors.weight_prior.fan_in_step_scale`); ``none`` leaves it as is.
    """

    steps: int = 1000
    tasks_per_step: int = 5
    num_samples: int = 32
    objective: str = "pp_avi"
    beta: float | None = None  # None: the family's default (0.1 for heaviside, else 1)
    lr_start: float = 3e-3
    lr_end: float = 1e-4
    steps_per_call: int = 25
    eval_every: int = 250
    eval_tasks: int = 32
    eval_samples: int = 32
    checkpoint_every: int = 250
    seed: int = 0
    prior_fraction: float = 1.0
    prior_side: str = "front"
    learn_sigma_y: bool = True
    batch_size: int | None = None
    context_buckets: int = objectives.DEFAULT_CONTEXT_BUCKETS
    shard: bool = False
    plot_samples: int = 200
    train_prior_mean: bool = True
    warm_start: WarmStartConfig | None = None
    prior_step_scale: str = "none"

    def __post_init__(self):
        def bad(name, problem):
            raise ConfigError(f"training.{name}: {problem}")

        for name in ("steps", "tasks_per_step", "num_samples", "steps_per_call", "eval_every", "eval_tasks",
                     "eval_samples", "checkpoint_every", "plot_samples"):
            if getattr(self, name) < 1:
                bad(name, f"must be a positive integer, got {getattr(self, name)}")
        if self.objective not in objectives.OBJECTIVES:
            bad("objective", f"must be one of {objectives.OBJECTIVES}, got {self.objective!r}")
        if self.beta is not None and not 0 <= self.beta < math.inf:  # NaN fails every comparison
            bad("beta", f"must be >= 0 and finite, got {self.beta}")
        for name in ("lr_start", "lr_end"):
            if not 0 < getattr(self, name) < math.inf:
                bad(name, f"learning rates must be > 0 and finite, got {self.lr_start} -> {self.lr_end}")
        if not 0 <= self.seed < SEED_LIMIT:
            bad("seed", f"must be in [0, 2**32) (PRNGKey would alias it to another seed), got {self.seed}")
        if not 0.0 <= self.prior_fraction <= 1.0:
            bad("prior_fraction", f"must be in [0, 1], got {self.prior_fraction}")
        if self.prior_side not in priors.SIDES:
            bad("prior_side", f"must be one of {priors.SIDES}, got {self.prior_side!r}")
        if self.prior_step_scale not in priors.STEP_SCALES:
            bad("prior_step_scale", f"must be one of {priors.STEP_SCALES}, got {self.prior_step_scale!r}")
        if self.context_buckets < 1:
            bad("context_buckets", f"must be a positive integer, got {self.context_buckets}")
        if self.batch_size is not None and self.batch_size < 1:
            bad("batch_size", f"must be a positive integer or null, got {self.batch_size}")
        if self.warm_start is not None and self.warm_start.warmup_lr < self.lr_end:
            bad("warm_start.warmup_lr", f"must be >= lr_end={self.lr_end} (the warm-up decays from warmup_lr to "
                f"lr_end), got {self.warm_start.warmup_lr}")
        if self.checkpoint_every % self.steps_per_call:
            bad("checkpoint_every", f"must be a multiple of steps_per_call={self.steps_per_call} "
                "(resumed runs then replay the same chunks), got {self.checkpoint_every}")


@dataclass(frozen=True)
class RunConfig:
    """A whole run: ``model`` name, ``data``, the architecture sections and ``training``."""

    model: str = "bnnp"
    data: DataConfig | None = field(default_factory=DataConfig)
    bnnp: BNNPConfig = field(default_factory=BNNPConfig)
    np: NPConfig = field(default_factory=NPConfig)
    bnam: BNAMConfig = field(default_factory=BNAMConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ConfigError(f"model: must be one of {MODELS}, got {self.model!r}")
        adapter = models.get(self.model)
        if not adapter.has_weight_prior:
            t = self.training
            if t.prior_fraction != 1.0:
                raise ConfigError(f"training.prior_fraction: model {self.model!r} has no weight prior; "
                                  f"leave it at 1.0 (got {t.prior_fraction})")
            if not t.train_prior_mean:
                raise ConfigError(f"training.train_prior_mean: model {self.model!r} has no weight prior; leave it true")
            if t.prior_step_scale != "none":
                raise ConfigError(f"training.prior_step_scale: model {self.model!r} has no weight prior; "
                                  "leave it 'none'")
            if not t.learn_sigma_y:
                raise ConfigError(f"training.learn_sigma_y: model {self.model!r} predicts its own noise; "
                                  "leave it true")
        if self.model == "bnnp":
            try:
                models.check_generated_prior(self.bnnp.prior_kind, self.training)
            except ValueError as e:
                raise ConfigError(str(e)) from e
            if self.training.warm_start is not None and self.bnnp.prior_kind == "metaprior":
                raise ConfigError("training.warm_start: it sets per-weight prior means, which prior_kind 'metaprior' "
                                  "generates from codes; set it to null")
        if self.training.warm_start is not None and self.model != "bnnp":
            raise ConfigError(f"training.warm_start: only the bnnp model has a warm start, got model {self.model!r}; "
                              "set it to null")
        if self.training.warm_start is not None and self.data is None and self.bnnp.hinge_range is None:
            raise ConfigError("training.warm_start: with data: null, set bnnp.hinge_range (the input range the "
                              "pooled fit spreads its first-layer hinges over)")
        if self.data is None:
            return
        from bnnp_jax.data import registry

        info = registry.family_info(self.data.family)
        for name in ("x_dim", "y_dim"):
            if getattr(self.arch, name) != info[name]:
                raise ConfigError(f"{adapter.section}.{name}: family {self.data.family!r} has {name}={info[name]}, "
                                  f"config says {getattr(self.arch, name)}")

    @property
    def arch(self):
        """The architecture section of the chosen model."""
        return getattr(self, models.get(self.model).section)


def load(path) -> RunConfig:
    """Load and validate a run config YAML."""
    return load_yaml(RunConfig, path)


def override(config: RunConfig, **training) -> RunConfig:
    """A copy with some ``training`` fields replaced (``None`` values are ignored)."""
    changes = {k: v for k, v in training.items() if v is not None}
    if not changes:
        return config
    return dataclasses.replace(config, training=from_dict(TrainingConfig, {**dataclasses.asdict(config.training), **changes}, "training"))
