"""LAPACK calls inside one program form a chain (bnnp_jax.core.linalg, lapack_order).

Two batched CPU LAPACK calls that XLA may run at once can starve a 2-thread pool
and hang the program; the checker reads the compiled program and lists such
pairs. The library's programs are compiled in a subprocess with ``--xla_dump_to``
(every program a fit builds, whatever its name) and must list none.
"""

import glob
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import solve_triangular

from bnnp_jax.core.lapack_order import lapack_call_count, unordered_lapack_calls
from bnnp_jax.core.linalg import after
from test_robustness_common import subprocess_env


def _three_solves(a, mode):
    outs = []
    for i in range(3):
        ai = a * (1.0 + i)
        if outs and mode == "barrier":
            _, ai = jax.lax.optimization_barrier((outs[-1], ai))
        if mode == "after":
            ai = after(ai, outs[-1:])
        eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), ai.shape)
        outs.append(solve_triangular(ai, eye, lower=True, trans=1))
    return outs


def _compiled(f, *args):
    return jax.jit(f, static_argnums=tuple(range(1, len(args)))).lower(*args).compile().as_text()


def test_checker_flags_independent_solves_and_after_chains_them():
    a = jnp.broadcast_to(2.0 * jnp.eye(4), (3, 4, 4))
    free = _compiled(_three_solves, a, "none")
    assert lapack_call_count(free) == 3 and len(unordered_lapack_calls(free)) == 3
    # an optimization_barrier leaves no data path in the compiled program: still unordered
    assert len(unordered_lapack_calls(_compiled(_three_solves, a, "barrier"))) == 3
    chained = _compiled(_three_solves, a, "after")
    assert lapack_call_count(chained) == 3 and unordered_lapack_calls(chained) == []
    # the backward pass of a chained program is a chain too
    loss = lambda a: sum(jnp.sum(o ** 2) for o in _three_solves(a, "after"))
    assert unordered_lapack_calls(jax.jit(jax.grad(loss)).lower(a).compile().as_text()) == []


def test_map_padded_equals_lax_map():
    from bnnp_jax.core.minibatch import map_padded

    xs = (jnp.arange(10.0), jnp.arange(20.0).reshape(10, 2))
    fn = lambda a: (a[0] * 2, jnp.sum(a[1]) + a[0])
    for bs in (1, 3, 4, 10, 16):
        got, want = map_padded(fn, xs, bs), jax.lax.map(fn, xs)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    # no remainder call beside the loop: the compiled program holds one copy of a solve
    a = jnp.broadcast_to(2.0 * jnp.eye(3), (10, 3, 3))
    solve = lambda m: solve_triangular(m, jnp.eye(3), lower=True)
    text = jax.jit(lambda a: map_padded(solve, a, 4)).lower(a).compile().as_text()
    assert lapack_call_count(text) == 1 and unordered_lapack_calls(text) == []
    text = jax.jit(lambda a: jax.lax.map(solve, a, batch_size=4)).lower(a).compile().as_text()
    assert lapack_call_count(text) == 2 and len(unordered_lapack_calls(text)) == 1  # what map_padded avoids


def test_pad_rows_fills_and_chunk():
    from bnnp_jax.core.minibatch import chunk, pad_rows

    a = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(pad_rows(a, 5), [[0, 1], [2, 3], [4, 5], [0, 0], [0, 0]])
    np.testing.assert_array_equal(pad_rows(a, 5, "last"), [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    np.testing.assert_array_equal(pad_rows(a, 3, "last"), a)
    np.testing.assert_array_equal(chunk(a, 2), [[[0, 1], [2, 3]], [[4, 5], [0, 0]]])
    with pytest.raises(ValueError, match="fill"):
        pad_rows(a, 4, "edge")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_after_keeps_values_dtypes_and_gradients(dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    x = {"a": jnp.array([-0.5, 1.5, 2.0], dtype), "n": jnp.arange(3)}
    deps = (jnp.array([jnp.nan, 1.0]), [jnp.array([jnp.inf], jnp.float32)], jnp.zeros((0,)))
    for fn in (after, jax.jit(after)):
        out = fn(x, deps)
        assert out["a"].dtype == dtype and out["n"].dtype == x["n"].dtype
        np.testing.assert_array_equal(out["a"], x["a"])  # exact: NaN/inf in deps do not leak
        np.testing.assert_array_equal(out["n"], x["n"])
    d = jnp.array([2.0, 3.0], dtype)
    f = lambda x, d: jnp.sum(after(x, d) ** 2) + jnp.sum(d ** 3)
    gx, gd = jax.grad(f, (0, 1))(x["a"], d)
    np.testing.assert_allclose(gx, 2 * x["a"])
    np.testing.assert_allclose(gd, 3 * d ** 2)
    # integer deps (e.g. a counter in a pytree) are allowed and get no gradient
    g_int = jax.grad(lambda x: jnp.sum(after(x, (jnp.arange(2), d)) ** 2))(x["a"])
    np.testing.assert_allclose(g_int, 2 * x["a"])
    batched = jax.vmap(after)(jnp.ones((2, 3), dtype), jnp.ones((2, 4), dtype))
    np.testing.assert_array_equal(batched, jnp.ones((2, 3), dtype))


PROGRAMS = textwrap.dedent("""
    import dataclasses, jax
    jax.config.update("jax_enable_x64", True)
    from bnnp_jax.studies import kl_table_grid
    from bnnp_jax.studies.kl_table_config import KLTableConfig, VISettings
    from bnnp_jax.inference import registry
    from bnnp_jax.bnnp import model as bnnp
    from bnnp_jax.bnnp.params import BNNPConfig, init

    # 9 fits and 10 ELBO draws in batches of 4: lax.map would add a remainder call beside its loop
    g = kl_table_grid.grid(KLTableConfig(seeds=(21,), num_sigma_y=9, widths=(1, 6, 6, 1), mode="paper"))
    for method in ("mfvi", "ucvi", "lcvi", "fcvi", "givi", "bnnp_per_task"):
        kf, ke = kl_table_grid.element_keys(g, method)
        own = dataclasses.asdict(VISettings()) if method in ("mfvi", "ucvi", "lcvi", "fcvi") else {}
        res = registry.fit_batch(method, kf, g.models, g.x, g.y, g.mask,
                                 **registry.budget(method, 2, (5e-3, 5e-5), 2), **own)
        registry.elbo_batch(ke, res, g.x, g.y, g.mask, 10, batch_size=4)
    own = {**dataclasses.asdict(VISettings()), "estimator": "stl"}  # log q's solves, segment by segment
    registry.fit_batch("ucvi", kf, g.models, g.x, g.y, g.mask, **registry.budget("ucvi", 2, (5e-3, 5e-5), 2), **own)
    params = init(jax.random.PRNGKey(0), BNNPConfig(hidden=(8, 8)))
    x = jax.numpy.linspace(-2, 2, 12)[:, None]
    kl = lambda p: bnnp.posterior_samples(jax.random.PRNGKey(1), p, x, jax.numpy.sin(x), 4).kl
    jax.block_until_ready(jax.jit(jax.value_and_grad(kl))(params))
    print("finished")
""")


def test_library_programs_chain_their_lapack_calls(tmp_path):
    env = subprocess_env()
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_dump_to={tmp_path}").strip()
    proc = subprocess.run([sys.executable, "-c", PROGRAMS], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr[-3000:]
    checked, bad = 0, {}
    for path in glob.glob(os.path.join(tmp_path, "*after_optimizations.txt")):
        text = open(path).read()
        if lapack_call_count(text):
            checked += 1
            pairs = unordered_lapack_calls(text)
            if pairs:
                bad[os.path.basename(path)] = pairs[:3]
    assert checked >= 10, f"only {checked} programs with LAPACK calls were dumped"
    assert not bad, bad


HUNG = textwrap.dedent("""
    import dataclasses, jax
    jax.config.update("jax_enable_x64", True)
    from bnnp_jax.studies import kl_table_grid
    from bnnp_jax.studies.kl_table_config import KLTableConfig
    from bnnp_jax.inference import registry

    g = kl_table_grid.grid(KLTableConfig(seeds=(21,), num_sigma_y=40, mode="paper"))
    kf, _ = kl_table_grid.element_keys(g, "mfvi")
    res = registry.fit_batch("mfvi", kf, g.models, g.x, g.y, g.mask, mean_init="prior_draw",
                             **registry.budget("mfvi", 20, (5e-3, 5e-5), 8))
    print("finished", res.losses.shape)
""")


def test_batched_fit_of_the_paper_grid_finishes():
    """40 MFVI fits of the KL table's BNN in one program: before the prior's factors were
    chained this hung on 2 cores in 2 of 3 runs (docs/kl_study.md, "The paper grid")."""
    proc = subprocess.run([sys.executable, "-c", HUNG], capture_output=True, text=True, timeout=400,
                          env=subprocess_env())
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr[-3000:]
