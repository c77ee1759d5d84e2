"""MetaPrior experiments (SPEC section 13): ``bnnp metaprior EXPERIMENT [--quick] [--out DIR]``.

Experiments: ``cubic`` (toy regression, function draws from one hidden code),
``moons`` (half-moons classification), ``digits`` (one hidden layer of 100
units, K = 10, map of the learned codes), ``fewshot`` (permuted inputs /
classes, illation of input, output or all codes vs a fine-tuned mean-field
BNN), and ``prior`` (beyond the seeds: a MetaPrior-generated BNNP prior against the
learned unitwise prior on a few training tasks, :mod:`bnnp_jax.studies.metaprior.prior_study`). Each
writes ``DIR/results.json`` and its plots.

Settings come from ``configs/metaprior_<experiment>.yaml`` (or ``--config``)
loaded into the frozen :class:`ExperimentConfig`; a ``quick:`` mapping inside
the file overrides keys for ``--quick``. Unknown keys raise a ValueError naming
the valid ones. Run ``python -m bnnp_jax.studies.metaprior.experiments moons --quick --out DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bnnp_jax.config import with_quick
from bnnp_jax.metaprior.model import CODES, MetaPriorConfig
from bnnp_jax.metaprior.fit import FitConfig
from bnnp_jax.metaprior.mfvi import MFConfig
from bnnp_jax.studies.metaprior.mlp_baseline import MLPConfig

__all__ = ["EXPERIMENTS", "VALIDATION_SPLIT", "CODE_VARIANT_EXPERIMENTS", "CONFIG_DIR", "ExperimentConfig",
           "config_from_dict", "load_config",
           "write_results", "add_arguments", "run", "summarise", "main"]

EXPERIMENTS = ("cubic", "moons", "digits", "fewshot", "prior")
VALIDATION_SPLIT = ("cubic", "moons", "digits", "fewshot")  # experiments whose data loader honours n_val
CODE_VARIANT_EXPERIMENTS = ("digits",)  # experiments that run with model.codes other than latent
CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
# MetaPriorConfig / MFConfig fields the experiment sets itself from the data.
_DERIVED = {"widths", "likelihood"}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Settings of one MetaPrior experiment (all four share this schema).

    ``model`` / ``baseline`` / ``mlp`` hold keyword arguments of :class:`MetaPriorConfig` /
    :class:`MFConfig` / :class:`MLPConfig` (not ``widths`` or ``likelihood``); ``fit``,
    ``baseline_fit``, ``mlp_fit``, ``illate_fit`` and ``finetune_fit`` hold :class:`FitConfig`
    arguments. ``n_val`` of the ``n_train`` labelled points are held out as a validation
    split (never drawn from the test set); the models are fitted on the other
    ``n_train - n_val``, and hyperparameters are chosen on the validation split only
    (the cubic draws its validation points from their own stream of the generator, so its
    fitting points do not depend on ``n_val``: :func:`~bnnp_jax.studies.metaprior.toys.cubic_split`).
    Few-shot illation runs each of ``illate_subsets`` under ``p(Z) = N(0, I)``, each of
    ``illate_posterior_subsets`` again with the trained ``Q(Z)`` as the prior, and each of
    ``illate_balanced_subsets`` under ``N(0, I)`` with the code KL weighted by
    ``n_shots / n_fit``, the balance between likelihood and KL that the codes were trained under.
    """

    seed: int = 0
    n_train: int = 500
    n_test: int = 1000
    n_val: int = 0
    noise: float = 0.2
    hidden: tuple[int, ...] = (50,)
    model: dict = dataclasses.field(default_factory=dict)
    fit: dict = dataclasses.field(default_factory=dict)
    baseline: dict = dataclasses.field(default_factory=dict)
    baseline_fit: dict = dataclasses.field(default_factory=dict)
    mlp: dict = dataclasses.field(default_factory=dict)
    mlp_fit: dict = dataclasses.field(default_factory=dict)
    eval_samples: int = 200
    num_draws: int = 20
    mf_draw_weights: int = 40
    shots: tuple[int, ...] = (10, 20, 50, 100, 200, 500)
    permutations: tuple[str, ...] = ("input", "classes", "both")
    illate_subsets: tuple[str, ...] = ("input", "output", "all")
    illate_fit: dict = dataclasses.field(default_factory=dict)
    illate_posterior_subsets: tuple[str, ...] = ()
    illate_balanced_subsets: tuple[str, ...] = ()
    finetune_fit: dict = dataclasses.field(default_factory=dict)
    finetune_priors: tuple[str, ...] = ("posterior", "original")

    def __post_init__(self):
        for name in ("hidden", "shots", "permutations", "illate_subsets", "illate_posterior_subsets",
                     "illate_balanced_subsets", "finetune_priors"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_keys("model", self.model, MetaPriorConfig)
        _check_keys("baseline", self.baseline, MFConfig)
        _check_keys("mlp", self.mlp, MLPConfig)
        for name in ("fit", "baseline_fit", "mlp_fit", "illate_fit", "finetune_fit"):
            _check_keys(name, getattr(self, name), FitConfig)
        if not set(self.finetune_priors) <= {"posterior", "original"}:
            raise ValueError(f"finetune_priors must be drawn from ('posterior', 'original'), got {self.finetune_priors}")
        for name in ("illate_subsets", "illate_posterior_subsets", "illate_balanced_subsets"):
            if not set(getattr(self, name)) <= {"all", "input", "output", "hidden"}:
                raise ValueError(f"{name} must be drawn from ('all', 'input', 'output', 'hidden'), "
                                 f"got {getattr(self, name)}")
        if not set(self.permutations) <= {"input", "classes", "both"}:
            raise ValueError(f"permutations must be drawn from ('input', 'classes', 'both'), got {self.permutations}")
        if self.n_val < 0 or (self.n_val and self.n_train and self.n_val >= self.n_train):
            raise ValueError(f"need 0 <= n_val < n_train (the validation split is carved from the training "
                             f"points), got n_val={self.n_val}, n_train={self.n_train}")
        if min(self.n_train, self.n_test) < 0 or self.eval_samples < 1:
            raise ValueError(f"need n_train, n_test >= 0 (0 = all, where the data allow) and eval_samples >= 1, "
                             f"got {self.n_train}, {self.n_test}, {self.eval_samples}")

    def model_config(self, widths: tuple[int, ...], likelihood: str) -> MetaPriorConfig:
        return MetaPriorConfig(widths=widths, likelihood=likelihood, **self.model)

    def baseline_config(self, widths: tuple[int, ...], likelihood: str) -> MFConfig:
        return MFConfig(widths=widths, likelihood=likelihood, **self.baseline)

    def mlp_config(self, widths: tuple[int, ...], likelihood: str) -> MLPConfig:
        return MLPConfig(widths=widths, likelihood=likelihood, **self.mlp)


def _check_keys(name: str, given: dict, cls) -> None:
    valid = sorted(f.name for f in dataclasses.fields(cls) if f.name not in _DERIVED)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in {name!r}; valid keys: {valid}")


def config_from_dict(raw: dict, quick: bool = False) -> ExperimentConfig:
    """Build the config, applying the ``quick`` overrides when asked; unknown keys raise."""
    return ExperimentConfig(**with_quick(ExperimentConfig, raw, quick))


def load_config(experiment: str, path: str | Path | None = None, quick: bool = False) -> ExperimentConfig:
    """Read ``configs/metaprior_<experiment>.yaml`` (or ``path``)."""
    if experiment not in EXPERIMENTS or experiment == "prior":
        raise ValueError(f"experiment must be one of {EXPERIMENTS[:-1]} (the prior study has its own "
                         f"loader), got {experiment!r}")
    path = Path(path) if path else CONFIG_DIR / f"metaprior_{experiment}.yaml"
    if not path.exists():
        raise ValueError(f"config file {str(path)!r} does not exist")
    return config_from_dict(yaml.safe_load(path.read_text()), quick)


def write_results(out: Path, results: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``bnnp metaprior``."""
    parser.add_argument("experiment", choices=EXPERIMENTS, help="which MetaPrior experiment to run")
    parser.add_argument("--quick", action="store_true", help="short run (the config's quick: overrides)")
    parser.add_argument("--out", default=None, help="output folder (default runs/metaprior/EXPERIMENT)")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                        help="run once per seed into DIR/seed_S and write DIR/summary.json (mean and s.d. of "
                             "every metric over the seeds)")
    parser.add_argument("--n-val", type=int, default=None, metavar="N",
                        help="override the config's n_val: validation points held out of the training points")
    parser.add_argument("--mnist", default=None, metavar="FILE_OR_DIR",
                        help="real MNIST for digits/fewshot: a Keras-layout .npz (x_train, y_train, x_test, "
                             "y_test) or a directory holding the four IDX files (train-images-idx3-ubyte, "
                             "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; "
                             "plain or .gz); default: sklearn's bundled 8x8 digits")
    parser.add_argument("--config", default=None, help="YAML config (default configs/metaprior_EXPERIMENT.yaml)")
    parser.add_argument("--codes", default=None, choices=CODES,
                        help="digits only: the MetaPrior's code variant, overriding the config's model.codes: "
                             "latent (Gaussian-LV, default), one_hot (Gaussian-OH: fixed one-hot unit codes, g's "
                             "first layer a learned embedding) or point (maximum-likelihood codes, no code KL)")


def run(args: argparse.Namespace) -> int:
    """Run one experiment from parsed arguments; returns an exit code."""
    import matplotlib

    matplotlib.use("Agg")
    import importlib

    if args.mnist and args.experiment not in ("digits", "fewshot"):
        raise ValueError(f"--mnist only applies to digits and fewshot, not {args.experiment!r}")
    out = Path(args.out or f"runs/metaprior/{args.experiment}")
    if args.experiment == "prior":
        study = importlib.import_module("bnnp_jax.studies.metaprior.prior_study")
        cfg = study.load_config(args.config or CONFIG_DIR / "metaprior_prior.yaml", args.quick)
        runner, kwargs = study.run, {}
    else:
        cfg = load_config(args.experiment, args.config, args.quick)
        module = "toys" if args.experiment in ("cubic", "moons") else "digits"
        runner = getattr(importlib.import_module(f"bnnp_jax.studies.metaprior.{module}"), f"run_{args.experiment}")
        kwargs = {"mnist": args.mnist} if args.experiment in ("digits", "fewshot") else {}
    if args.seed is not None and args.seeds:
        raise ValueError("give --seed or --seeds, not both")
    if getattr(args, "codes", None) is not None:
        if args.experiment not in CODE_VARIANT_EXPERIMENTS:
            raise ValueError(f"--codes applies to {CODE_VARIANT_EXPERIMENTS} only, not {args.experiment!r}")
        cfg = dataclasses.replace(cfg, model={**cfg.model, "codes": args.codes})
    if args.experiment != "prior" and cfg.model.get("codes", "latent") != "latent" \
            and args.experiment not in CODE_VARIANT_EXPERIMENTS:
        raise ValueError(f"model.codes = {cfg.model['codes']!r} is implemented for {CODE_VARIANT_EXPERIMENTS} only "
                         f"(the other experiments read or illate Q(Z)), not {args.experiment!r}")
    if args.n_val is not None:
        if args.experiment == "prior":
            raise ValueError("--n-val does not apply to the prior study")
        cfg = dataclasses.replace(cfg, n_val=args.n_val)
    if getattr(cfg, "n_val", 0) and args.experiment not in VALIDATION_SPLIT:
        raise ValueError(f"a validation split (n_val > 0) is implemented for {VALIDATION_SPLIT} only, "
                         f"not {args.experiment!r}")
    seeds = args.seeds or [cfg.seed if args.seed is None else args.seed]
    runs = []
    for seed in seeds:
        cfg_s, dest = dataclasses.replace(cfg, seed=seed), out / f"seed_{seed}" if args.seeds else out
        start = time.perf_counter()
        results = runner(cfg_s, dest, **kwargs)
        results.update(experiment=args.experiment, quick=bool(args.quick), seed=seed,
                       config=dataclasses.asdict(cfg_s), wall_seconds=round(time.perf_counter() - start, 1))
        print(f"wrote {write_results(dest, results)}")
        runs.append(results)
    if args.seeds:
        summary = {"experiment": args.experiment, "quick": bool(args.quick), "seeds": seeds,
                   "config": dataclasses.asdict(dataclasses.replace(cfg, seed=seeds[0])) | {"seed": None},
                   "mean_sd": summarise(runs)}
        path = out / "summary.json"
        path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")
    return 0


def summarise(runs: list[dict]) -> dict:
    """Mean and sample s.d. (``ddof = 1``; 0 for one run) over runs of every numeric leaf that
    all runs share, as ``{"a/b": {"mean", "sd", "values"}}``; the seed and timing are included."""
    def leaves(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if k == "config":
                continue
            if isinstance(v, dict):
                out.update(leaves(v, f"{prefix}{k}/"))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}{k}"] = float(v)
        return out

    flat = [leaves(r) for r in runs]
    shared = sorted(set.intersection(*(set(f) for f in flat)))
    result = {}
    for name in shared:
        values = np.array([f[name] for f in flat])
        sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        result[name] = {"mean": float(values.mean()), "sd": sd, "values": values.tolist()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnnp metaprior", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
