"""Meta-training: optax Adam with linear decay, jitted ``lax.scan`` chunks of
steps, tqdm progress, periodic evaluation, atomic checkpoints, resume.

Determinism: the tasks and Monte-Carlo keys of step ``t`` are
``fold_in(PRNGKey(seed), t)``, so a run resumed from a checkpoint replays
exactly the steps an uninterrupted run would take (chunks are aligned to
``checkpoint_every``), and ends with bit-identical parameters on CPU.
A non-finite loss stops the run with :class:`TrainingDiverged`, keeping the
last good checkpoint on disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from bnnp_jax import bnnp, checkpoint, objectives, priors
from bnnp_jax.config import dump_yaml
from bnnp_jax.data import registry
from bnnp_jax.run_config import RunConfig

Array = jax.Array
INIT_STREAM = 2**31 - 1  # fold_in index of the initialisation key (steps use 0, 1, ...)
EVAL_STREAM = 2**31 - 2


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: Array  # scalar int


def beta_for(config: RunConfig) -> float:
    b = config.training.beta
    return registry.family_info(config.data.family)["beta"] if b is None else b


def make_sampler(config: RunConfig) -> Callable:
    """``sampler(key, num_tasks) -> TaskBatch`` for the run's family."""
    d = config.data
    kw = dict(d.params)
    if d.n_range is not None:
        kw["n_range"] = tuple(d.n_range)
    return registry.make_batch_sampler(d.family, tuple(d.context_proportion) if d.context_proportion else None, **kw)


def gradient_mask(config: RunConfig, params: bnnp.BNNPParams) -> bnnp.BNNPParams:
    """1.0 for trainable entries, 0.0 for frozen ones (SPEC section 3): the prior
    by (fraction, side, seed), sigma_y by ``learn_sigma_y``."""
    t = config.training
    prior_mask = priors.trainable_mask(params.prior, config.bnnp.prior_kind, t.prior_fraction, t.prior_side, t.seed)
    as_float = lambda m, ref: jnp.asarray(m, ref.dtype)
    return params.replace(
        prior=jax.tree.map(as_float, prior_mask, params.prior),
        inference=jax.tree.map(jnp.ones_like, params.inference),
        likelihood=jax.tree.map(lambda a: jnp.full_like(a, float(t.learn_sigma_y)), params.likelihood),
    )


def make_optimizer(config: RunConfig, mask: Any) -> optax.GradientTransformation:
    t = config.training
    schedule = optax.linear_schedule(t.lr_start, t.lr_end, t.steps)
    # Frozen entries get exactly zero gradient, hence zero Adam updates.
    mask_grads = optax.GradientTransformation(lambda p: optax.EmptyState(),
                                              lambda g, s, p=None: (jax.tree.map(jnp.multiply, g, mask), s))
    return optax.chain(mask_grads, optax.adam(schedule))


def init_state(config: RunConfig) -> tuple[TrainState, optax.GradientTransformation]:
    key = jax.random.PRNGKey(config.training.seed)
    params = bnnp.init(jax.random.fold_in(key, INIT_STREAM), config.bnnp)
    opt = make_optimizer(config, gradient_mask(config, params))
    return TrainState(params, opt.init(params), jnp.zeros((), jnp.int32)), opt


def _shard_batch(batch, mesh):
    if mesh is None:
        return batch
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("tasks"))
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, spec), batch)


def make_train_chunk(config: RunConfig, opt: optax.GradientTransformation, mesh=None) -> Callable:
    """``chunk(state, num_steps) -> (state, losses [num_steps])``, jitted; one
    ``lax.scan`` over steps, tasks generated on device inside each step."""
    t = config.training
    sampler = make_sampler(config)
    beta = beta_for(config)
    base_key = jax.random.PRNGKey(t.seed)

    def loss_fn(params, key):
        k_data, k_mc = jax.random.split(key)
        batch = _shard_batch(sampler(k_data, t.tasks_per_step), mesh)
        terms = objectives.batch_terms(k_mc, params, batch, t.num_samples, t.batch_size)
        return -jnp.mean(objectives.combine(terms, t.objective, beta))

    def one_step(state: TrainState, _):
        key = jax.random.fold_in(base_key, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, key)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), loss

    def chunk(state, num_steps):
        return jax.lax.scan(one_step, state, None, length=num_steps)

    return jax.jit(chunk, static_argnums=1)


def make_mesh(config: RunConfig):
    """A 1-D ``Mesh`` over all local devices when ``training.shard`` is set."""
    if not config.training.shard:
        return None
    devices = np.array(jax.local_devices())
    if config.training.tasks_per_step % len(devices):
        raise ValueError(f"training.tasks_per_step={config.training.tasks_per_step} must be divisible by "
                         f"the number of devices ({len(devices)}) when training.shard is true")
    return jax.sharding.Mesh(devices, ("tasks",))


def _check_finite(losses: np.ndarray, first_step: int, run_dir: Path | None) -> None:
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        last = checkpoint.list_checkpoints(run_dir / "checkpoints") if run_dir else []
        where = f"; last good checkpoint: {last[-1]}" if last else "; no checkpoint was written yet"
        raise TrainingDiverged(f"non-finite loss ({losses[bad[0]]}) at step {first_step + int(bad[0])}; "
                               f"stopping without saving{where}")


def fit(config: RunConfig, run_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
        evaluate_fn: Callable | None = None) -> tuple[TrainState, dict]:
    """Train for ``config.training.steps`` steps. Returns the final state and a
    history dict (``loss`` per step, ``eval`` list). With ``run_dir``, writes
    ``config.yaml``, checkpoints every ``checkpoint_every`` steps and ``history.json``."""
    t = config.training
    state, opt = init_state(config)
    history: dict = {"loss": [], "eval": [], "seconds": 0.0}
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(config, run_dir / "config.yaml")
        if resume and checkpoint.list_checkpoints(run_dir / "checkpoints"):
            _, state, extra = checkpoint.restore_latest(run_dir / "checkpoints", state)
            history = extra.get("history", history)
    chunk = make_train_chunk(config, opt, make_mesh(config))
    start = int(state.step)
    bar = tqdm(total=t.steps, initial=start, disable=not progress, desc="train", unit="step", dynamic_ncols=True)
    while int(state.step) < t.steps:
        step0 = int(state.step)
        n = min(t.steps_per_call, t.steps - step0)
        tic = time.perf_counter()
        new_state, losses = chunk(state, n)
        losses = np.asarray(jax.block_until_ready(losses))
        elapsed = time.perf_counter() - tic
        _check_finite(losses, step0, run_dir)
        state = new_state
        history["loss"].extend(float(v) for v in losses)
        history["seconds"] += elapsed
        bar.update(n)
        bar.set_postfix(loss=f"{losses.mean():.3f}", tasks_per_s=f"{n * t.tasks_per_step / elapsed:.1f}")
        step = int(state.step)
        if evaluate_fn is not None and (step % t.eval_every == 0 or step == t.steps):
            history["eval"].append({"step": step, **evaluate_fn(state.params)})
        if run_dir is not None and (step % t.checkpoint_every == 0 or step == t.steps):
            checkpoint.save(run_dir / "checkpoints", step, state, {"history": history})
    bar.close()
    if run_dir is not None:
        (run_dir / "history.json").write_text(json.dumps(history))
    return state, history


def load_run(run_dir: str | Path) -> tuple[RunConfig, bnnp.BNNPParams, dict]:
    """``(config, params, history)`` from the newest checkpoint of a run directory."""
    from bnnp_jax import run_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise checkpoint.CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    config = run_config.load(run_dir / "config.yaml")
    template, _ = init_state(config)
    _, state, extra = checkpoint.restore_latest(run_dir / "checkpoints", template)
    return config, state.params, extra.get("history", {})
