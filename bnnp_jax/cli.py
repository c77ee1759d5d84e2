"""The ``bnnp`` command line: train, evaluate, sample-prior, predict, and the studies.

Usage errors (bad arguments, bad config, missing or corrupt files, bad data)
print one ``bnnp: error: ...`` line and exit with status 2, no traceback.
A diverged training run exits with status 1 and keeps its last good checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["STUDIES", "DEFAULT_CONFIG", "UsageError", "build_parser", "main"]

STUDIES = {
    # subcommand: (module, help)
    "compare": ("bnnp_jax.studies.kl_table", "KL(q || posterior) table over a sigma_y grid (SPEC section 11)"),
    "nfl": ("bnnp_jax.studies.nfl", "no-free-lunch comparison of inference methods under a learned prior"),
    "metaprior": ("bnnp_jax.studies.metaprior.experiments", "MetaPrior experiments (cubic, moons, digits, fewshot, prior)"),
    "goldilocks": ("bnnp_jax.studies.goldilocks", "small meta-dataset study over the trainable prior fraction"),
    "large-meta": ("bnnp_jax.studies.large_meta", "sawtooth contrast: BNNP vs neural processes as the meta-dataset grows"),
}


DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "main_job.yaml"


class UsageError(Exception):
    """Raised for user mistakes; reported without a traceback, exit 2."""


def _int_in(low: int, high: float, what: str):
    """argparse type: an integer in ``[low, high)``; argparse reports a failure (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value < high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    return parse


_positive_int = _int_in(1, float("inf"), "a positive integer")
# PRNGKey keeps the low 32 bits, so larger seeds would alias smaller ones (run_config.SEED_LIMIT).
_seed = _int_in(0, 2**32, "in [0, 2**32)")


def _cmd_train(args) -> int:
    from bnnp_jax.training import config as run_config
    from bnnp_jax.training import loop as train
    from bnnp_jax.training.report import write_report

    if args.config is None:  # the embedded default: a copy of configs/main_job.yaml shipped in the wheel
        args.config = str(DEFAULT_CONFIG)
    config = run_config.override(run_config.load(args.config), steps=args.steps, seed=args.seed)
    _enable_dtype(config)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if not args.resume and list((out / "checkpoints").glob("ckpt_*.pkl")):
        raise UsageError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    from bnnp_jax.training.report import training_evaluator

    untrained, _ = train.init_state(config)
    evaluate = training_evaluator(config, untrained.params)
    state, history = train.fit(config, out, resume=args.resume, progress=not args.no_progress, evaluate_fn=evaluate)
    if int(state.step) < config.training.steps:  # stopped by SIGTERM/SIGINT, checkpointed
        print(f"stopped at step {int(state.step)} of {config.training.steps}; checkpoint and history.json are in "
              f"{out}; continue with: bnnp train {args.config} --out {out} --resume", file=sys.stderr)
        return 0
    metrics = write_report(out, config, state.params, untrained.params, history)
    print(json.dumps({"run_dir": str(out), "heldout": metrics["heldout"], "prior_mmd": metrics.get("prior_mmd"),
                      "tasks_per_second": metrics["tasks_per_second"]}, indent=2))
    return 0


def _enable_dtype(config) -> None:
    """float64 configs switch JAX to 64-bit before anything is built. The dtype is
    read from the section of the model the run trains (``config.arch``: ``bnnp``,
    ``np`` or ``bnam``), not from ``bnnp`` alone, which other models leave at its default."""
    if getattr(config.arch, "dtype", "float32") == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)


def _load_run(run_dir):
    from bnnp_jax.training import config as run_config
    from bnnp_jax.training import loop as train

    cfg_path = Path(run_dir) / "config.yaml"
    if cfg_path.is_file():
        _enable_dtype(run_config.load(cfg_path))
    return train.load_run(run_dir)


def _cmd_evaluate(args) -> int:
    from bnnp_jax.training import loop as train
    from bnnp_jax.training.report import write_report

    config, params, history = _load_run(args.run_dir)
    untrained, _ = train.init_state(config)
    metrics = write_report(Path(args.run_dir), config, params, untrained.params, history)
    print(json.dumps({"heldout": metrics["heldout"], "prior_mmd": metrics.get("prior_mmd")}, indent=2))
    return 0


def _cmd_sample_prior(args) -> int:
    import jax

    from bnnp_jax.training import evaluation, models, plots

    config, params, _ = _load_run(args.run_dir)
    if not models.get(config.model).has_weight_prior:
        raise UsageError(f"sample-prior: model {config.model!r} is a neural process, which has no prior over "
                         "functions to draw from (only a predictive given a context); use bnnp predict")
    if config.arch.x_dim != 1:
        raise UsageError("sample-prior writes function draws on a 1-D grid; this run's x_dim is "
                         f"{config.arch.x_dim} (use the library's bnnp_jax.prior_samples instead)")
    if config.data is None:
        raise UsageError("sample-prior takes its grid from the run's data.family, and this run has data: null "
                         "(use the library's bnnp_jax.prior_samples instead)")
    grid = evaluation.grid_for(config.data.family, args.grid)
    f = evaluation.prior_function_samples(jax.random.PRNGKey(args.seed), params, grid, args.num)
    out = Path(args.out) if args.out else Path(args.run_dir) / "prior_draws.npz"
    np.savez(out, x=np.asarray(grid), f=np.asarray(f))
    png = out.with_suffix(".png")
    plots.function_draws(np.asarray(grid)[:, 0], np.asarray(f), png, f"{config.model}: learned prior draws")
    print(f"wrote {args.num} prior function draws on {args.grid} points to {out} (plot: {png})")
    return 0


def _load_xy(path: str, need_y: bool, what: str):
    from bnnp_jax import validation

    return validation.load_xy_file(path, need_y=need_y, what=what)


def _predictive(args, config, params, x_c, y_c, x_t):
    """``(mean [N_t, y_dim], variance [N_t, y_dim], draws)`` of the run's model at ``x_t``:
    ``draws [S, N_t, y_dim]`` are posterior function draws (BNNP, BNAM), ``None`` for the
    neural processes, whose predictive is a mixture over points with no joint draws."""
    import jax

    import bnnp_jax
    from bnnp_jax import validation
    from bnnp_jax.training import models

    key = jax.random.PRNGKey(args.seed)
    if config.model == "bnnp":  # validated by the library function
        pred = bnnp_jax.predict(key, params, x_c, y_c, x_t, args.num_samples, args.batch_size)
        return pred.mean, pred.variance, pred.samples
    adapter = models.get(config.model)
    if args.batch_size is not None:
        raise UsageError(f"--batch-size: only bnnp runs minibatch their context; this run's model is {config.model!r}")
    if args.samples and not adapter.has_weight_prior:
        raise UsageError(f"--samples: model {config.model!r} is a neural process: it predicts each target point "
                         "on its own and gives no joint posterior function draws (drop --samples; the mean and "
                         "variance are still written)")
    num_samples = validation.check_positive_int("num_samples", args.num_samples)
    arch, dtype = config.arch, np.dtype(config.arch.dtype)
    x_c, y_c = validation.check_pair("x_c", x_c, "y_c", y_c, arch.x_dim, arch.y_dim, dtype=dtype)
    x_t = validation.check_array("x_t", x_t, 2, arch.x_dim, dim_name="x_dim (last dimension)", dtype=dtype)
    f, variance = adapter.predict(key, params, x_c, y_c, x_t, num_samples)  # f: draws or mixture component means
    return np.asarray(f).mean(0), variance, (f if adapter.has_weight_prior else None)


def _cmd_predict(args) -> int:
    from bnnp_jax.training import plots

    config, params, _ = _load_run(args.run_dir)
    x_c, y_c = _load_xy(args.context, True, "--context")
    x_t, _ = _load_xy(args.targets, False, "--targets")
    mean, variance, draws = _predictive(args, config, params, x_c, y_c, x_t)
    out = Path(args.out) if args.out else Path(args.run_dir) / "predictions.npz"
    arrays = {"x": x_t, "mean": np.asarray(mean), "variance": np.asarray(variance)}
    if args.samples:
        arrays["samples"] = np.asarray(draws)
    np.savez(out, **arrays)
    png = out.with_suffix(".png")
    plots.prediction(x_t, arrays["mean"], arrays["variance"], png, x_c, y_c,
                     None if draws is None else np.asarray(draws), f"{config.model}: posterior predictive")
    what = f"posterior function draws {arrays['samples'].shape}, " if args.samples else ""
    print(f"wrote {what}predictive mean and variance {arrays['mean'].shape} to {out} (plot: {png})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bnnp", description="Bayesian neural network processes: meta-learned priors, "
                                "amortised inference, baselines and MetaPrior.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="meta-train a BNNP from a YAML config", description="Meta-train a BNNP. "
                       "Writes config.yaml, checkpoints/, history.json, metrics.json and plots to the run directory.")
    t.add_argument("config", nargs="?", default=None,
                   help="YAML config, e.g. configs/sawtooth.yaml (default: the embedded main_job config, configs/main_job.yaml)")
    t.add_argument("--steps", type=int, help="override training.steps")
    t.add_argument("--seed", type=_seed, help="override training.seed")
    t.add_argument("--out", help="run directory (default: runs/CONFIG_NAME)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a run on held-out tasks", description="Re-evaluate a run "
                       "directory's newest checkpoint; rewrites metrics.json and plots.")
    e.add_argument("run_dir")
    e.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("sample-prior", help="draw functions from a run's learned prior",
                       description="Write prior function draws on a grid over the family's input range "
                       "(npz: x [G, 1], f [num, G, y_dim]) and a plot of them beside it (same name, .png). "
                       "BNNP and BNAM runs (a BNAM's draws are joint over the grid); neural processes have "
                       "no prior to draw from.")
    s.add_argument("run_dir")
    s.add_argument("--num", type=_positive_int, default=16, help="number of draws (default 16)")
    s.add_argument("--grid", type=_positive_int, default=200, help="grid size (default 200)")
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--out", help="output npz (default RUN_DIR/prior_draws.npz)")
    s.set_defaults(func=_cmd_sample_prior)

    q = sub.add_parser("predict", help="amortised posterior predictive for new data",
                       description="Predict at target inputs given a context set, with any model bnnp train "
                       "makes. Files are npz (arrays x, y) or csv (columns x..., then y...). Writes npz: x [N_t, "
                       "x_dim], mean and variance [N_t, y_dim] of the predictive (and, with --samples, samples), "
                       "and a plot beside it (same name, .png).")
    q.add_argument("run_dir")
    q.add_argument("--context", required=True, help="npz/csv with x [N, x_dim] and y [N, y_dim]")
    q.add_argument("--targets", required=True, help="npz/csv with x [M, x_dim]")
    q.add_argument("--out", help="output npz (default RUN_DIR/predictions.npz)")
    q.add_argument("--num-samples", type=int, default=32, help="Monte-Carlo samples S of the predictive (default 32)")
    q.add_argument("--samples", action="store_true", help="also write the posterior function draws, "
                   "samples [S, N_t, y_dim] (BNNP and BNAM runs; neural processes give no joint draws)")
    q.add_argument("--batch-size", type=int, default=None, help="within-task minibatch size for large contexts "
                   "(bnnp runs)")
    q.add_argument("--seed", type=_seed, default=0)
    q.set_defaults(func=_cmd_predict)

    for name, (module, help_text) in STUDIES.items():
        try:
            mod = importlib.import_module(module)
            if not (hasattr(mod, "add_arguments") and hasattr(mod, "run")):
                raise ImportError(f"{module} defines no add_arguments(parser) and run(args)")
        except Exception as e:  # noqa: BLE001 - any import-time failure, reported when the subcommand is used
            _add_broken_study(sub, name, module, help_text, e)
            continue
        sp = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.run)
    return p


def _add_broken_study(sub, name: str, module: str, help_text: str, error: Exception) -> None:
    """A study whose module failed to import keeps its subcommand: ``bnnp --help`` marks it
    unavailable and running it prints the import error and exits 1 (it never just vanishes)."""
    reason = f"{type(error).__name__}: {error}"
    sp = sub.add_parser(name, help=f"{help_text} [UNAVAILABLE: {reason}]", add_help=False,
                        description=f"{help_text}. Unavailable: importing {module} failed with {reason}")

    def unavailable(args) -> int:
        print(f"bnnp: error: the {name!r} study is unavailable: importing {module} failed with {reason}",
              file=sys.stderr)
        return 1

    sp.set_defaults(func=unavailable, import_error=error)


def main(argv=None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and getattr(args, "import_error", None) is None:  # an unavailable study takes any arguments
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from bnnp_jax.training.checkpoint import CheckpointError
    from bnnp_jax.config import ConfigError
    from bnnp_jax.training.loop import TrainingDiverged

    try:
        return int(args.func(args) or 0)
    except TrainingDiverged as e:
        print(f"bnnp: training diverged: {e}", file=sys.stderr)
        return 1
    except (UsageError, ConfigError, CheckpointError, ValueError, OSError) as e:
        # OSError: unwritable --out (under a regular file, no permission, disk full) and unreadable inputs
        print(f"bnnp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
