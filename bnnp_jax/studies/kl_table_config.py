"""Settings of the KL table (``bnnp compare``; SPEC sections 10, 11), loaded strictly from YAML
(:func:`bnnp_jax.config.load_yaml`: an unknown key is an error naming the valid keys)."""

from __future__ import annotations

import dataclasses

import numpy as np

from bnnp_jax.config import to_dict

__all__ = ["fingerprint", "METHODS", "GAUSSIAN_VI", "MODES", "PAPER_SEEDS", "TrainSettings", "VISettings", "AISSettings",
           "NUTSSettings", "KLTableConfig"]

METHODS = ("bnnp_per_task", "bnnp_amortised", "givi", "ucvi", "lcvi", "fcvi", "mfvi")
GAUSSIAN_VI = ("mfvi", "ucvi", "lcvi", "fcvi")  # nested families: MFVI ⊂ UCVI ⊂ LCVI ⊂ FCVI
MODES = ("paper", "certified")
FIT_BATCHES = ("all", "seed")
PAPER_SEEDS = (21, 42, 69, 420)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    num_steps: int = 20_000
    lr_start: float = 5e-3
    lr_end: float = 5e-5
    num_particles: int = 8
    givi_inducing: int = 10


@dataclasses.dataclass(frozen=True)
class VISettings:
    """How MFVI/UCVI/LCVI/FCVI are fitted (:func:`bnnp_jax.inference.gaussian_vi.fit`'s
    keywords, with its defaults). The paper-grid configs set the start scale and step rule
    chosen on validation datasets (``init_log_scale: -1``, ``step_rule: row``;
    docs/kl_study.md)."""

    scale: str = "ggn"
    mean_init: str = "gauss_newton"
    estimator: str = "closed_form"
    init_log_scale: float = 0.0
    factor: str = "direct"
    step_rule: str = "entry"


@dataclasses.dataclass(frozen=True)
class AISSettings:
    num_temps: int = 10_000
    num_particles: int = 64
    num_leapfrog: int = 10
    schedule: str = "geometric"


@dataclasses.dataclass(frozen=True)
class NUTSSettings:
    num_warmup: int = 1000
    num_samples: int = 1000
    num_chains: int = 2


@dataclasses.dataclass(frozen=True)
class KLTableConfig:
    """Settings of the KL table (defaults: SPEC section 11).

    ``seeds``: one dataset per seed (its own ``N``), every method fitted at every
    ``(seed, sigma_y)``; ``seed`` is shorthand for ``seeds: [seed]``. ``sigma_y_values``
    overrides the log-spaced grid ``sigma_y_min .. sigma_y_max`` (``num_sigma_y`` points).
    ``bnnp_checkpoint`` is needed for ``bnnp_amortised``: the run directory of a BNNP
    meta-trained with the table's fixed prior (``configs/kl_meta_bnnp.yaml``).
    ``fit_batches``: ``"all"`` fits a method's whole grid (and the evidence's) as one batched
    program (resumable per method); ``"seed"`` one program per dataset seed, kept as it
    finishes (resumable per method and seed: for runs of hours, whose optimiser states are
    too large to checkpoint).
    """

    seeds: tuple[int, ...] = PAPER_SEEDS
    seed: int | None = None
    widths: tuple[int, ...] = (1, 20, 20, 1)
    activation: str = "relu"
    x_range: tuple[float, ...] = (-4.0, 4.0)
    n_range: tuple[int, ...] = (21, 42)
    data_noise: float = 0.1
    sigma_y_min: float = 0.01
    sigma_y_max: float = 10.0
    num_sigma_y: int = 40
    sigma_y_values: tuple[float, ...] = ()
    methods: tuple[str, ...] = ("bnnp_per_task", "givi", "ucvi", "fcvi", "mfvi")
    mode: str = "certified"
    elbo_samples: int = 10_000
    float64: bool = True
    train: TrainSettings = TrainSettings()
    vi: VISettings = VISettings()
    ais: AISSettings = AISSettings()
    nuts: NUTSSettings = NUTSSettings()
    bnnp_checkpoint: str | None = None
    fit_batches: str = "all"

    def __post_init__(self):
        if self.seed is not None:
            if self.seeds != PAPER_SEEDS and tuple(self.seeds) != (self.seed,):
                raise ValueError(f"give seed or seeds, not both (seed: {self.seed}, seeds: {list(self.seeds)})")
            object.__setattr__(self, "seeds", (self.seed,))
            object.__setattr__(self, "seed", None)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct seeds, got {list(self.seeds)}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"methods: unknown {bad}; valid methods are {list(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods: each method once, got {list(self.methods)}")
        if self.fit_batches not in FIT_BATCHES:
            raise ValueError(f"fit_batches must be one of {FIT_BATCHES}, got {self.fit_batches!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if "bnnp_amortised" in self.methods and not self.bnnp_checkpoint:
            raise ValueError("methods: bnnp_amortised needs bnnp_checkpoint (the run directory of a meta-trained "
                             "BNNP, e.g. `bnnp train configs/kl_meta_bnnp.yaml --out DIR`)")
        if len(self.x_range) != 2 or len(self.n_range) != 2 or not self.n_range[0] < self.n_range[1]:
            raise ValueError(f"x_range and n_range need two entries, n_range increasing; got {self.x_range}, {self.n_range}")

    @property
    def paper_design(self) -> bool:
        """SPEC section 11's table: paper mode on the 1-20-20-1 BNN, whose rows and reference
        the outputs show first."""
        return self.mode == "paper" and tuple(self.widths) == (1, 20, 20, 1)

    def sigma_grid(self) -> np.ndarray:
        if self.sigma_y_values:
            return np.asarray(self.sigma_y_values, float)
        return np.geomspace(self.sigma_y_min, self.sigma_y_max, self.num_sigma_y)


def fingerprint(cfg: KLTableConfig) -> dict:
    """What a stored method's or evidence's records depend on: the config less the method list
    and the batching (which changes results only by float error)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in ("methods", "fit_batches")}
