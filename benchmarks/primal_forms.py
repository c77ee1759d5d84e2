"""The layer sampler's two primal forms side by side: the information form
(``blr.PriorFactors``: the prior's precision root ``U = L^{-1}``, one triangular
inverse per step shared by every path) and the whitened form (``blr.ScaleFactors``:
``L`` itself and ``M = I + L^T S L`` on every path), at the unitwise layer's shapes
(SPEC sections 4 and 9).

A training case times the value and gradient of ``sum(KL) + sum(w)`` over ``S`` paths
of one layer (``O`` units, ``D`` inputs with bias, ``N`` points, per-unit
pseudo-precisions); a prediction case times the draws alone (``with_kl=False``, no
gradient), at the shapes of ``amortised_vs_mcmc``'s path-dependent hidden layer (20
units, 21 inputs, N = 30, 1000 paths). Each case times compile and run apart and
reports the whitened form's time as a ratio of the information form's, with XLA's FLOP
count and the achieved rate against a matmul measured in the same run.

    python benchmarks/primal_forms.py [--quick] [--device cpu|gpu]
"""

from __future__ import annotations

import argparse
import sys

import _common as C


def run_case(o: int, d: int, n: int, s: int, dtype: str, repeats: int, case: str = "train") -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bnnp_jax.core import blr

    rng = np.random.default_rng(0)
    a = rng.normal(size=(o, d, d))
    tril = jnp.asarray(np.linalg.cholesky(a @ np.swapaxes(a, -1, -2) / d + 0.3 * np.eye(d)), dtype)
    mu = jnp.asarray(rng.normal(size=(o, d)), dtype)
    phi, yhat = (jnp.asarray(rng.normal(size=(s, n, k)), dtype) for k in (d, o))
    lam = jnp.asarray(rng.uniform(0.2, 5.0, size=(s, n, o)), dtype)

    def loss(mu, tril, yhat, whiten):
        prior = blr.ScaleFactors(mu, tril) if whiten else blr.PriorFactors(mu, blr.inverse_trils([tril])[0])

        def path(key, p, y, l):
            w, kl = blr.sample_posterior(key, prior, blr.natural_stats(p, y, l), with_kl=case == "train")
            return jnp.sum(w) if kl is None else jnp.sum(kl) + jnp.sum(w)

        return jnp.sum(jax.vmap(path)(jax.random.split(jax.random.PRNGKey(0), s), phi, yhat, lam))

    rows = []
    for name, whiten in (("information", False), ("whitened", True)):
        fn = lambda m, t, y, w=whiten: loss(m, t, y, w)  # noqa: E731
        fn = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)) if case == "train" else fn)
        t = C.time_fn(fn, mu, tril, yhat, repeats=repeats)
        flops = C.xla_flops(fn, mu, tril, yhat)
        rows.append({"case": case, "form": name, "O": o, "D": d, "N": n, "S": s, "dtype": dtype, "xla_gflop": (flops or 0) / 1e9,
                     "gflop_per_s": (flops or 0) / t["run_median_s"] / 1e9, **C.timing(t)})
    rows[1]["time_ratio_to_information"] = rows[1]["run_median_s"] / rows[0]["run_median_s"]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    args = C.parse_args(parser, argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    cases = [(32, 33, 50, 8, "train")] + ([] if args.quick else [(64, 65, 100, 16, "train")])
    cases.append((20, 21, 30, 1000, "predict"))
    rows = []
    for o, d, n, s, case in cases:
        for dtype in ("float32", "float64"):
            rows += run_case(o, d, n, s, dtype, repeats=5 if args.quick else 11, case=case)
            C.print_table(rows[-2:], ["case", "form", "O", "D", "N", "S", "dtype", "run_median_s", "compile_s_est",
                                      "gflop_per_s", "time_ratio_to_information"])
    C.write_json("primal_forms", args, rows, matmul_rates=C.matmul_rates())


if __name__ == "__main__":
    sys.exit(main())
