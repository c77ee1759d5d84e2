"""Batched small-matrix Cholesky and triangular solves: jaxlib's LAPACK kernels
against a factorisation written in plain JAX ops, at the shapes of the unitwise
layer's amortised prediction.

The unitwise posterior of a [20, 20] BNN at N = 30 context points, drawn for
1000 functions, factorises 1000 x 20 precision matrices of size 21 x 21 per
hidden layer (SPEC section 4): ``P = C C^T``, then ``w = C^{-T}(C^{-1} eta + eps)``.
On CPU, jaxlib runs one LAPACK call per matrix (``potrf``, ``trsm``), paying a
per-matrix cost that dwarfs the ~3,000 flops of a 21 x 21 factorisation.

The plain-JAX version puts the batch on the last (vector) axis and unrolls the
column loop (``n`` is static), so each column step is one fused elementwise
loop over the whole batch, with no custom call. Both compute the same draw; the
script checks they agree, then times them side by side in one process (compile
and run apart, ``block_until_ready``) and reports the ratio.

    python benchmarks/small_cholesky.py [--quick] [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import sys

import _common as C


def _plain_cholesky_draw(p, eta, eps):
    """``C^{-T}(C^{-1} eta + eps)`` for ``p [n, n, B]`` (batch last), ``eta, eps [n, B]``,
    with ``P = C C^T`` factorised column by column in elementwise ops (right-looking
    Cholesky unrolled over the static ``n``)."""
    import jax.numpy as jnp

    n = p.shape[0]
    cols = []  # cols[k]: column k of C below the diagonal, rows k..n-1, [n - k, B]
    for j in range(n):
        s = p[j:, j]
        for k in range(j):
            s = s - cols[k][j - k:] * cols[k][j - k]
        d = jnp.sqrt(s[0])
        cols.append(jnp.concatenate([d[None], s[1:] / d], 0))
    z = []  # forward substitution: C z = eta
    for i in range(n):
        r = eta[i]
        for k in range(i):
            r = r - cols[k][i - k] * z[k]
        z.append(r / cols[i][0])
    z = [zi + ei for zi, ei in zip(z, eps)]
    w = [None] * n  # back substitution: C^T w = z + eps
    for i in reversed(range(n)):
        r = z[i]
        for k in range(i + 1, n):
            r = r - cols[i][k - i] * w[k]
        w[i] = r / cols[i][0]
    return jnp.stack(w)


def _lapack_draw(p, eta, eps):
    """The same draw through ``jnp.linalg.cholesky`` and ``solve_triangular``: ``p [B, n, n]``."""
    import jax.numpy as jnp
    from jax.scipy.linalg import solve_triangular

    c = jnp.linalg.cholesky(p)
    z = solve_triangular(c, eta[..., None], lower=True)[..., 0] + eps
    return solve_triangular(jnp.swapaxes(c, -1, -2), z[..., None], lower=False)[..., 0]


def run_case(batch: int, n: int, dtype: str, repeats: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    a = jax.random.normal(k1, (batch, 2 * n, n), dtype)
    p = jnp.einsum("bmi,bmj->bij", a, a) / (2 * n) + 0.1 * jnp.eye(n, dtype=dtype)  # well-conditioned SPD
    eta, eps = jax.random.normal(k2, (batch, n), dtype), jax.random.normal(k3, (batch, n), dtype)
    lapack = jax.jit(_lapack_draw)
    # The plain version takes batch-last arrays; the transposes are inside the timed call.
    plain = jax.jit(lambda p, e, z: _plain_cholesky_draw(jnp.moveaxis(p, 0, -1), e.T, z.T).T)
    flops = batch * (n**3 / 3 + 2 * n**2)
    rows = []
    for name, fn in (("lapack", lapack), ("plain_jax", plain)):
        t = C.time_fn(fn, p, eta, eps, repeats=repeats)  # first call = compile + run
        rows.append({"method": name, "batch": batch, "n": n, "dtype": dtype,
                     "gflop_per_s": flops / t["run_median_s"] / 1e9, **C.timing(t)})
    ref, got = np.asarray(lapack(p, eta, eps)), np.asarray(plain(p, eta, eps))
    rows[1]["rel_diff_to_lapack"] = float(np.max(np.abs(ref - got)) / np.max(np.abs(ref)))
    rows[1]["speedup_over_lapack"] = rows[0]["run_median_s"] / rows[1]["run_median_s"]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    args = C.parse_args(parser, argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    cases = [(20000, 21), (1000, 21)] if args.quick else [(20000, 21), (1000, 21), (2000, 65)]
    rows = []
    for batch, n in cases:
        for dtype in ("float32", "float64"):
            rows += run_case(batch, n, dtype, repeats=5 if args.quick else 11)
            C.print_table(rows[-2:], ["method", "batch", "n", "dtype", "run_median_s", "compile_s_est",
                                      "gflop_per_s", "speedup_over_lapack", "rel_diff_to_lapack"])
    C.write_json("small_cholesky", args, rows, matmul_rates=C.matmul_rates())


if __name__ == "__main__":
    sys.exit(main())
