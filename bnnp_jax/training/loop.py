"""Meta-training: optax Adam with linear decay, jitted ``lax.scan`` chunks of
steps, tqdm progress, periodic evaluation, atomic checkpoints, resume.

Determinism: the tasks and Monte-Carlo keys of step ``t`` are
``fold_in(PRNGKey(seed), t)``, so a run resumed from a checkpoint replays
exactly the steps an uninterrupted run would take (chunks are aligned to
``checkpoint_every``), and ends with bit-identical parameters on CPU.
A non-finite loss stops the run with :class:`TrainingDiverged`, keeping the
last good checkpoint on disk.

The loop is model-agnostic: ``config.model`` picks an adapter from
:mod:`bnnp_jax.training.models` (bnnp, bnam, cnp, np, anp, tnp) that supplies the
parameters, the loss and the gradient mask. Tasks come from ``config.data``'s
family, or from a ``sampler(key, num_tasks) -> TaskBatch`` passed to
:func:`fit` / :func:`make_train_chunk` (studies with their own meta-dataset).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnnp_jax.core.driver import run_chunks
from bnnp_jax.training import checkpoint
from bnnp_jax.training import models
from bnnp_jax.config import dump_yaml
from bnnp_jax.data import registry
from bnnp_jax.training.config import RunConfig

__all__ = ["INIT_STREAM", "EVAL_STREAM", "WARM_STREAM", "TrainingDiverged", "TrainState", "beta_for",
           "make_sampler", "gradient_mask", "make_optimizer", "init_state", "make_train_chunk",
           "shared_train_chunk", "make_mesh", "warm_start_params", "fit", "load_run"]

Array = jax.Array
INIT_STREAM = 2**31 - 1  # fold_in index of the initialisation key (steps use 0, 1, ...)
EVAL_STREAM = 2**31 - 2
WARM_STREAM = 2**31 - 3  # the warm start's tasks and warm-up steps


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: Array  # scalar int


def beta_for(config: RunConfig) -> float:
    """``training.beta``, else the family's default (1.0 without a family)."""
    b = config.training.beta
    if b is not None:
        return b
    return 1.0 if config.data is None else registry.family_info(config.data.family)["beta"]


def make_sampler(config: RunConfig) -> Callable:
    """``sampler(key, num_tasks) -> TaskBatch`` for the run's family."""
    d = config.data
    if d is None:
        raise ValueError("config.data is null: pass a task sampler (sampler=...) to train this config")
    kw = dict(d.params)
    if d.n_range is not None:
        kw["n_range"] = tuple(d.n_range)
    return registry.make_batch_sampler(d.family, tuple(d.context_proportion) if d.context_proportion else None, **kw)


def gradient_mask(config: RunConfig, params: Any) -> Any:
    """1.0 for trainable entries, 0.0 for frozen ones (SPEC section 3): for the
    models with a weight prior, the prior by (fraction, side, seed) and sigma_y by
    ``learn_sigma_y``; everything for the neural processes."""
    return models.get(config.model).gradient_mask(params, config.training)


def make_optimizer(config: RunConfig, mask: Any) -> optax.GradientTransformation:
    t = config.training
    schedule = optax.linear_schedule(t.lr_start, t.lr_end, t.steps)
    # Frozen entries get exactly zero gradient, hence zero Adam updates.
    mask_grads = optax.GradientTransformation(lambda p: optax.EmptyState(),
                                              lambda g, s, p=None: (jax.tree.map(jnp.multiply, g, mask), s))
    adam = optax.adam(schedule)
    scale = models.weight_prior_step_scale(mask, t)  # None for prior_step_scale: none
    if scale is None:
        return optax.chain(mask_grads, adam)

    # The step scale multiplies Adam's output (a multiplier before Adam would cancel in
    # its normalisation); wrapping Adam keeps the optimiser state's structure, so
    # checkpoints restore whichever setting wrote them.
    def scaled_update(g, s, p=None):
        updates, s = adam.update(g, s, p)
        return jax.tree.map(jnp.multiply, updates, scale), s

    return optax.chain(mask_grads, optax.GradientTransformation(adam.init, scaled_update))


def init_state(config: RunConfig) -> tuple[TrainState, optax.GradientTransformation]:
    key = jax.random.PRNGKey(config.training.seed)
    params = models.get(config.model).init(jax.random.fold_in(key, INIT_STREAM), config.arch)
    opt = make_optimizer(config, gradient_mask(config, params))
    return TrainState(params, opt.init(params), jnp.zeros((), jnp.int32)), opt


def _shard_batch(batch, mesh):
    if mesh is None:
        return batch
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("tasks"))
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, spec), batch)


def _step_fn(config: RunConfig, opt: optax.GradientTransformation, base_key: Array, sampler: Callable, mesh):
    """``one_step(state, _) -> (state, loss)`` for ``lax.scan``: the tasks and Monte-Carlo
    keys of step ``t`` come from ``fold_in(base_key, t)``."""
    t = config.training
    beta = beta_for(config)
    model_loss = models.get(config.model).loss

    def loss_fn(params, key):
        k_data, k_mc = jax.random.split(key)
        batch = _shard_batch(sampler(k_data, t.tasks_per_step), mesh)
        return model_loss(k_mc, params, batch, t, beta)

    def one_step(state: TrainState, _):
        key = jax.random.fold_in(base_key, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, key)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), loss

    return one_step


def make_train_chunk(config: RunConfig, opt: optax.GradientTransformation, mesh=None,
                     sampler: Callable | None = None, base_key: Array | None = None) -> Callable:
    """``chunk(state, num_steps) -> (state, losses [num_steps])``, jitted; one
    ``lax.scan`` over steps, tasks generated on device inside each step (by
    ``sampler``, default: the config's family) from ``fold_in(base_key, step)``
    (default base key: ``PRNGKey(training.seed)``)."""
    sampler = make_sampler(config) if sampler is None else sampler
    base_key = jax.random.PRNGKey(config.training.seed) if base_key is None else base_key
    one_step = _step_fn(config, opt, base_key, sampler, mesh)

    def chunk(state, num_steps):
        return jax.lax.scan(one_step, state, None, length=num_steps)

    return jax.jit(chunk, static_argnums=1)


_SHARED_CHUNKS: dict = {}


def shared_train_chunk(config: RunConfig, mesh=None, sampler: Callable | None = None) -> Callable:
    """``chunk(state, mask, base_key, num_steps) -> (state, losses)``: :func:`make_train_chunk`
    with the gradient mask and the run's base key as *arguments*, cached in this process,
    so the runs of a sweep that differ only in ``training.seed``, ``prior_fraction`` or
    ``prior_side`` (and share ``sampler``) trace and compile once. Same steps, same numbers."""
    sampler = make_sampler(config) if sampler is None else sampler
    t = config.training
    norm = dataclasses.replace(config, training=dataclasses.replace(t, seed=0, prior_fraction=1.0,
                                                                    prior_side="front"))
    cache_key = (repr(norm), id(sampler), id(mesh))
    if cache_key not in _SHARED_CHUNKS:
        def chunk(state, mask, base_key, num_steps):
            one_step = _step_fn(norm, make_optimizer(norm, mask), base_key, sampler, mesh)
            return jax.lax.scan(one_step, state, None, length=num_steps)

        # The sampler and mesh are kept alive with the entry, so their ids stay unique.
        _SHARED_CHUNKS[cache_key] = (jax.jit(chunk, static_argnums=3), sampler, mesh)
    return _SHARED_CHUNKS[cache_key][0]


def make_mesh(config: RunConfig):
    """A 1-D ``Mesh`` over all local devices when ``training.shard`` is set."""
    if not config.training.shard:
        return None
    devices = np.array(jax.local_devices())
    if config.training.tasks_per_step % len(devices):
        raise ValueError(f"training.tasks_per_step={config.training.tasks_per_step} must be divisible by "
                         f"the number of devices ({len(devices)}) when training.shard is true")
    if len(devices) > 1 and devices[0].platform == "cpu":
        warnings.warn("training.shard over CPU host devices: jaxlib's batched LAPACK kernels on concurrent virtual "
                      "devices can deadlock on machines with few cores (benchmarks/README.md, devices.py); "
                      "sharding is meant for accelerators", RuntimeWarning, stacklevel=2)
    return jax.sharding.Mesh(devices, ("tasks",))


def warm_start_params(config: RunConfig, params: Any, sampler: Callable | None = None,
                      progress: bool = True) -> tuple[Any, dict]:
    """Apply ``training.warm_start`` (:mod:`bnnp_jax.bnnp.warm_start`) to fresh BNNP parameters:
    the prior mean from a pooled fit, then ``warmup_steps`` of meta-training with the
    prior frozen. Deterministic in ``training.seed`` (its own key stream, ``WARM_STREAM``).
    Returns the parameters and a summary for the history."""
    from bnnp_jax.bnnp import warm_start

    ws = config.training.warm_start
    sampler = make_sampler(config) if sampler is None else sampler
    k_tasks, k_fit, k_steps = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.training.seed),
                                                                  WARM_STREAM), 3)
    hinge_range = config.arch.hinge_range  # RunConfig checks that one of the two is there
    if hinge_range is None:
        hinge_range = config.data.params.get("x_range", registry.family_info(config.data.family)["x_range"])
    tic = time.perf_counter()
    params, info = warm_start.warm_prior(k_fit, params, sampler(k_tasks, ws.tasks), hinge_range=tuple(hinge_range),
                                         steps=ws.fit_steps, learning_rate=ws.fit_lr,
                                         hidden_std_scale=ws.hidden_std_scale, output_std_scale=ws.output_std_scale)
    if ws.warmup_steps:
        params, losses = _warm_up(config, params, sampler, k_steps, progress)
        info["warmup_loss_last_10pct"] = float(np.mean(losses[-max(1, len(losses) // 10):]))
    info["seconds"] = time.perf_counter() - tic
    return params, info


def _warm_up(config: RunConfig, params: Any, sampler: Callable, base_key: Array, progress: bool):
    """``warmup_steps`` of training with every prior entry frozen (the inference networks
    and sigma_y learn to work with the warm-started prior before it moves)."""
    from bnnp_jax.training.config import override

    ws = config.training.warm_start
    cfg = override(config, steps=ws.warmup_steps, lr_start=ws.warmup_lr, prior_fraction=0.0)
    opt = make_optimizer(cfg, gradient_mask(cfg, params))
    chunk = make_train_chunk(cfg, opt, make_mesh(cfg), sampler, base_key)
    losses: list = []
    state = _run_chunks(cfg, chunk, TrainState(params, opt.init(params), jnp.zeros((), jnp.int32)), "warm-up",
                        progress, on_chunk=lambda _, chunk_losses, __: losses.extend(chunk_losses.tolist()))
    return state.params, losses


def _run_chunks(config: RunConfig, chunk: Callable, state: TrainState, desc: str, progress: bool,
                run_dir: Path | None = None, on_chunk: Callable | None = None,
                stop: Callable[[], bool] = lambda: False) -> TrainState:
    """Call ``chunk(state, n)`` (``n <= steps_per_call``) until ``state.step`` reaches
    ``training.steps``, or ``stop()`` is true after a chunk. A chunk with a non-finite
    loss raises :class:`TrainingDiverged` before its state is kept; after each kept
    chunk, ``on_chunk(state, losses, seconds)``."""
    t = config.training

    def run_chunk(state, start, n):
        new_state, losses = chunk(state, n)
        return new_state, np.asarray(jax.block_until_ready(losses))

    state, _ = run_chunks(run_chunk, state, t.steps, t.steps_per_call, start=int(state.step), desc=desc,
                          progress=progress, check=lambda losses, step0: _check_finite(losses, step0, run_dir, _dtype_hint(config)),
                          postfix=lambda losses, n, sec: {"loss": f"{losses.mean():.3f}",
                                                          "tasks_per_s": f"{n * t.tasks_per_step / sec:.1f}"},
                          on_chunk=on_chunk, stop=stop, leave=True, unit="step", dynamic_ncols=True)
    return state


def _dtype_hint(config: RunConfig) -> str:
    """What to try after a float32 BNNP diverges: its path sampler factorises the
    information form ``P0 + Phi^T Lambda Phi``, whose float32 Cholesky holds only to
    precision ratios of about 1e4 (bnnp_jax.core.blr; docs/robustness.md), and small
    ``sigma_y`` or sharp pseudo-observations exceed that."""
    if config.model == "bnnp" and config.arch.dtype == "float32":
        return ("; if the learning rate is sane, the likely cause is float32 itself: the layer posterior's Cholesky "
                "factor holds only to precision ratios of about 1e4 (docs/robustness.md), so try bnnp.dtype: "
                "float64 (the paper's setting)")
    return ""


def _check_finite(losses: np.ndarray, first_step: int, run_dir: Path | None, hint: str = "") -> None:
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        last = checkpoint.list_checkpoints(run_dir / "checkpoints") if run_dir else []
        where = f"; last good checkpoint: {last[-1]}" if last else "; no checkpoint was written yet"
        raise TrainingDiverged(f"non-finite loss ({losses[bad[0]]}) at step {first_step + int(bad[0])}; "
                               f"stopping without saving{where}{hint}")


def _starting_state(config: RunConfig, run_dir: Path | None, resume: bool, sampler, progress: bool):
    """``(state, opt, history)``: the newest checkpoint when resuming, else a fresh
    state, warm-started (``training.warm_start``) only when training starts at step 0."""
    state, opt = init_state(config)
    history: dict = {"loss": [], "eval": [], "seconds": 0.0}
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(config, run_dir / "config.yaml")
        if resume and checkpoint.list_checkpoints(run_dir / "checkpoints"):
            _, state, extra = checkpoint.restore_latest(run_dir / "checkpoints", state)
            history = extra.get("history", history)
    if config.training.warm_start is not None and int(state.step) == 0:
        params, history["warm_start"] = warm_start_params(config, state.params, sampler, progress)
        state = TrainState(params, opt.init(params), state.step)
    return state, opt, history


def fit(config: RunConfig, run_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
        evaluate_fn: Callable | None = None, sampler: Callable | None = None,
        shared_compile: bool = False) -> tuple[TrainState, dict]:
    """Train for ``config.training.steps`` steps. Returns the final state and a
    history dict (``loss`` per step, ``eval`` list). With ``run_dir``, writes
    ``config.yaml``, checkpoints every ``checkpoint_every`` steps and ``history.json``.
    ``sampler(key, num_tasks) -> TaskBatch`` replaces the config's task family;
    ``shared_compile`` trains through :func:`shared_train_chunk` (for sweeps)."""
    t = config.training
    run_dir = Path(run_dir) if run_dir is not None else None
    state, opt, history = _starting_state(config, run_dir, resume, sampler, progress)
    if shared_compile:
        shared = shared_train_chunk(config, make_mesh(config), sampler)
        mask, base_key = gradient_mask(config, state.params), jax.random.PRNGKey(t.seed)
        chunk = lambda s, n: shared(s, mask, base_key, n)
    else:
        chunk = make_train_chunk(config, opt, make_mesh(config), sampler)
    if evaluate_fn is not None and int(state.step) == 0:
        history["eval"].append({"step": 0, **evaluate_fn(state.params)})

    def after_chunk(state, losses, elapsed):
        history["loss"].extend(float(v) for v in losses)
        history["seconds"] += elapsed
        step = int(state.step)
        if evaluate_fn is not None and (step % t.eval_every == 0 or step == t.steps):
            history["eval"].append({"step": step, **evaluate_fn(state.params)})
        if run_dir is not None and (step % t.checkpoint_every == 0 or step == t.steps):
            checkpoint.save(run_dir / "checkpoints", step, state, {"history": history})
            # history.json beside every checkpoint, so a run committed mid-way shows its curves.
            checkpoint.write_text_atomic(run_dir / "history.json", json.dumps(history))

    with _stop_on_signal(run_dir is not None) as stop:
        state = _run_chunks(config, chunk, state, "train", progress, run_dir, after_chunk, stop)
    step = int(state.step)
    if stop() and step < t.steps and step % t.checkpoint_every:  # stopped between checkpoints: keep the work
        checkpoint.save(run_dir / "checkpoints", step, state, {"history": history})
    if run_dir is not None:
        checkpoint.write_text_atomic(run_dir / "history.json", json.dumps(history))
    return state, history


class _stop_on_signal:
    """Within the block, SIGTERM and SIGINT ask the loop to stop after the running chunk
    (``stop()`` turns true) instead of killing it, so :func:`fit` can checkpoint the steps
    since the last checkpoint before it returns. A second signal acts as usual. Only a
    run with a directory, in the main thread (where Python delivers signals), installs it."""

    def __init__(self, active: bool):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested, self.previous = False, {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signum, self.previous[signum])  # a second signal is not caught
        print(f"\n{signal.Signals(signum).name}: stopping after this chunk and checkpointing", file=sys.stderr)

    def __enter__(self):
        if self.active:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def load_run(run_dir: str | Path) -> tuple[RunConfig, Any, dict]:
    """``(config, params, history)`` from the newest checkpoint of a run directory."""
    from bnnp_jax.training import config as run_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise checkpoint.CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    config = run_config.load(run_dir / "config.yaml")
    template, _ = init_state(config)
    _, state, extra = checkpoint.restore_latest(run_dir / "checkpoints", template)
    return config, state.params, extra.get("history", {})
