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

from bnnp_jax import bnnp
from bnnp_jax.data.tasks import TaskBatch

Array = jax.Array


class TaskTerms(NamedTuple):
    """Per-task terms, each ``[T]`` after vmapping (scalars for one task)."""

    ctxt_ell: Array
    trgt_ppl: Array
    kl: Array


def task_terms(key, params, x, y, context, target, num_samples: int, batch_size=None) -> TaskTerms:
    """The three terms for one padded task: ``x [N, x_dim]``, ``y [N, y_dim]``,
    ``context``/``target`` ``[N]`` weights."""
    post = bnnp.masked_posterior(key, params, x, y, context, num_samples, batch_size)
    ll = bnnp.log_likelihood_sums(params, post.weights, x, y, jnp.stack([context, target], -1), batch_size)
    ctxt_ell = jnp.mean(ll[:, 0])
    trgt_ppl = jax.nn.logsumexp(ll[:, 1]) - math.log(num_samples)
    return TaskTerms(ctxt_ell, trgt_ppl, post.kl)


def batch_terms(key, params, batch: TaskBatch, num_samples: int, batch_size=None) -> TaskTerms:
    """:func:`task_terms` vmapped over the tasks of a padded batch: each ``[T]``."""
    keys = jax.random.split(key, batch.x.shape[0])
    fn = lambda k, x, y, c, t: task_terms(k, params, x, y, c, t, num_samples, batch_size)
    return jax.vmap(fn)(keys, batch.x, batch.y, batch.context, batch.target)


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


def pp_avi(key, params, batch: TaskBatch, num_samples: int, beta: float = 1.0, batch_size=None) -> Array:
    """PP-AVI: ``beta * log q(Y_t | D_c, X_t) + ELBO_beta(D_c)``, mean over tasks."""
    return jnp.mean(combine(batch_terms(key, params, batch, num_samples, batch_size), "pp_avi", beta))


def avi(key, params, batch: TaskBatch, num_samples: int, beta: float = 1.0, batch_size=None) -> Array:
    """Amortised VI: the (beta-weighted) ELBO of the context set, mean over tasks."""
    return jnp.mean(combine(batch_terms(key, params, batch, num_samples, batch_size), "avi", beta))


def npml(key, params, batch: TaskBatch, num_samples: int, beta: float = 1.0, batch_size=None) -> Array:
    """Neural-process maximum likelihood: the target log predictive, mean over tasks.
    ``beta`` is accepted for a uniform signature and unused."""
    del beta
    return jnp.mean(combine(batch_terms(key, params, batch, num_samples, batch_size), "npml"))
