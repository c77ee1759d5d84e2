"""Training objectives over padded task batches (SPEC section 5). All are *maximised*.

Per task, with ``S`` posterior paths built from the context set:

    ctxt_ell = mean_s  sum_{n in c} log N(y_n | f_s(x_n), sigma_y^2)
    trgt_ppl = logsumexp_s [ sum_{n in t} log N(y_n | f_s(x_n), sigma_y^2) ] - log S
    pp_avi   = beta * trgt_ppl + ctxt_ell - beta * KL
    avi      = ctxt_ell - beta * KL
    npml     = trgt_ppl

then averaged over the tasks of the batch. Padded points carry zero context
and target weight, so they change neither the posterior nor the likelihoods.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.data.tasks import TaskBatch

__all__ = ["DEFAULT_CONTEXT_BUCKETS", "TaskTerms", "task_terms", "context_sizes", "batch_terms", "combine",
           "OBJECTIVES", "pp_avi", "avi", "npml"]

Array = jax.Array
DEFAULT_CONTEXT_BUCKETS = 4


class TaskTerms(NamedTuple):
    """Per-task terms, each ``[T]`` after vmapping (scalars for one task)."""

    ctxt_ell: Array
    trgt_ppl: Array
    kl: Array


def task_terms(key, params, x, y, context, target, num_samples: int, batch_size=None,
               context_index=None) -> TaskTerms:
    """The three terms for one padded task: ``x [N, x_dim]``, ``y [N, y_dim]``,
    ``context``/``target`` ``[N]`` weights. With ``context_index [N_c]`` (rows that
    hold every context point, :class:`~bnnp_jax.data.tasks.TaskBatch`) the posterior
    is built from those ``N_c`` rows alone: the same posterior, at the cost of ``N_c``
    points instead of ``N`` (and in the dual form when ``N_c`` is below a layer's width)."""
    if context_index is None or bnnp.minibatched(x.shape[0], batch_size):
        post = bnnp.masked_posterior(key, params, x, y, context, num_samples, batch_size)
    else:
        post = bnnp.masked_posterior(key, params, x[context_index], y[context_index], context[context_index],
                                     num_samples)
    ll = bnnp.log_likelihood_sums(params, post.weights, x, y, jnp.stack([context, target], -1), batch_size)
    ctxt_ell = jnp.mean(ll[:, 0])
    trgt_ppl = jax.nn.logsumexp(ll[:, 1]) - math.log(num_samples)
    return TaskTerms(ctxt_ell, trgt_ppl, post.kl)


def context_sizes(bound: int, buckets: int) -> tuple[int, ...]:
    """The static context sizes a task is padded to: ``buckets`` evenly spaced sizes up to ``bound``."""
    return tuple(sorted({max(1, math.ceil(bound * (i + 1) / buckets)) for i in range(buckets)}))


def batch_terms(key, params, batch: TaskBatch, num_samples: int, batch_size=None,
                context_buckets: int = DEFAULT_CONTEXT_BUCKETS) -> TaskTerms:
    """:func:`task_terms` over the tasks of a padded batch: each ``[T]``.

    With a gathered context (``batch.context_index [T, N_c]``) and ``context_buckets > 1``,
    each task's posterior is built from the smallest of :func:`context_sizes` rows that
    holds its context, chosen by ``lax.switch``: a task with 8 context points does not
    pay for 50. The cost of a layer grows like ``N^2 (N + D)``, so on the paper's 1-D
    tasks (context 4 to 50 points, mean 21) four sizes cut it about 3.5x. Real control
    flow needs the tasks one after another (``lax.map``); under an outer ``vmap`` the
    switch evaluates every branch, so pass ``context_buckets=1`` there. The posterior is
    the same for every size (extra rows have zero weight); the draws depend on the
    size, as any padding changes which normals the dual form uses.
    """
    keys = jax.random.split(key, batch.x.shape[0])
    args = (keys, batch.x, batch.y, batch.context, batch.target, batch.context_index)
    if batch.context_index is None or bnnp.minibatched(batch.x.shape[1], batch_size) or context_buckets <= 1:
        fn = lambda k, x, y, c, t, i: task_terms(k, params, x, y, c, t, num_samples, batch_size, i)
        return jax.vmap(fn)(*args)
    sizes = context_sizes(batch.context_index.shape[1], context_buckets)
    branches = [lambda q, k, x, y, c, t, i, s=s: task_terms(k, q, x, y, c, t, num_samples, None, i[:s])
                for s in sizes]

    def one(task):
        index = jnp.searchsorted(jnp.asarray(sizes), jnp.sum(task[3] > 0))
        return _switch_recompute(index, branches, params, *task)

    return jax.lax.map(one, args)


def _switch_recompute(index, branches, *args):
    """``lax.switch(index, branches, *args)`` whose backward pass re-runs the taken branch
    under ``jax.vjp`` inside a second switch. Why: differentiating ``lax.switch`` directly
    passes the union of every branch's residuals out of the forward switch, zero-filled
    for the branches not taken, which costs more than recomputing the one that was."""

    @jax.custom_vjp
    def switch(index, *args):
        return jax.lax.switch(index, branches, *args)

    def fwd(index, *args):
        return switch(index, *args), (index, args)

    def bwd(res, g):
        index, args = res
        vjps = [lambda g, *a, b=b: jax.vjp(b, *a)[1](g) for b in branches]
        return (None, *jax.lax.switch(index, vjps, g, *args))

    switch.defvjp(fwd, bwd)
    return switch(index, *args)


def combine(terms: TaskTerms, objective: str, beta: float = 1.0) -> Array:
    """Per-task objective values ``[T]`` from the terms."""
    if objective == "pp_avi":
        return beta * terms.trgt_ppl + terms.ctxt_ell - beta * terms.kl
    if objective == "avi":
        return terms.ctxt_ell - beta * terms.kl
    if objective == "npml":
        return terms.trgt_ppl
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


OBJECTIVES = ("pp_avi", "avi", "npml")


def pp_avi(key, params, batch: TaskBatch, num_samples: int, beta: float = 1.0, batch_size=None,
           context_buckets: int = DEFAULT_CONTEXT_BUCKETS) -> Array:
    """PP-AVI: ``beta * log q(Y_t | D_c, X_t) + ELBO_beta(D_c)``, mean over tasks."""
    terms = batch_terms(key, params, batch, num_samples, batch_size, context_buckets)
    return jnp.mean(combine(terms, "pp_avi", beta))


def avi(key, params, batch: TaskBatch, num_samples: int, beta: float = 1.0, batch_size=None,
        context_buckets: int = DEFAULT_CONTEXT_BUCKETS) -> Array:
    """Amortised VI: the (beta-weighted) ELBO of the context set, mean over tasks."""
    return jnp.mean(combine(batch_terms(key, params, batch, num_samples, batch_size, context_buckets), "avi", beta))


def npml(key, params, batch: TaskBatch, num_samples: int, beta: float = 1.0, batch_size=None,
         context_buckets: int = DEFAULT_CONTEXT_BUCKETS) -> Array:
    """Neural-process maximum likelihood: the target log predictive, mean over tasks.
    ``beta`` is accepted for a uniform signature and unused."""
    del beta
    return jnp.mean(combine(batch_terms(key, params, batch, num_samples, batch_size, context_buckets), "npml"))
