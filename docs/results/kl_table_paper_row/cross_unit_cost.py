"""Is FCVI's small ELBO deficit against UCVI at large sigma_y the KL cost of its cross-unit
entries? Seed 21, sigma_y in {2, 3.5, 10}, the reduced grid's settings (1000 steps,
init_log_scale -1, step_rule row), ELBOs from 10,000 draws.

    python docs/results/kl_table_paper_row/cross_unit_cost.py   # prints; output in cross_unit_cost.md

``V = C_p^T S`` is the prior-relative factor, so ``KL(q || prior)`` holds ``1/2 ||V||_F^2``:
``1/2`` the sum of squared cross-unit entries of ``V`` is what those entries cost. Where the
likelihood is weak (large sigma_y) they buy almost nothing, so if the deficit equals their
cost, the deficit is those entries.
"""
import dataclasses, jax, numpy as np
jax.config.update("jax_enable_x64", True)
from bnnp_jax.inference import registry
from bnnp_jax.inference import gaussian_family as gf
from bnnp_jax.inference.layout import unit_shapes
from bnnp_jax.studies import kl_table
from bnnp_jax.studies.kl_table_config import KLTableConfig, VISettings
cfg = KLTableConfig(seeds=(21,), sigma_y_values=(2.0, 3.5, 10.0), mode="paper", methods=("fcvi",))
g = kl_table.grid(cfg)
vi = {**dataclasses.asdict(VISettings()), "init_log_scale": -1.0, "step_rule": "row"}
out = {}
for m in ("ucvi", "fcvi"):
    kf, ke = kl_table._keys(g, m)
    res = registry.fit_batch(m, kf, g.models, g.x, g.y, g.mask, **registry.budget(m, 1000, (5e-3, 5e-5), 8), **vi)
    est = registry.elbo_batch(ke, res, g.x, g.y, g.mask, 10000)
    out[m] = (res, np.asarray(est.value))
res = out["fcvi"][0]
# unit id of every flat weight (unit-major within a layer)
ids, k = [], 0
for o, d in unit_shapes(cfg.widths):
    for u in range(o):
        ids += [k] * d; k += 1
ids = np.array(ids)
cross = ids[:, None] != ids[None, :]
for i, s in enumerate(g.sigmas):
    t = res.params.t[0][i, 0]; r = res.whitening.row_scale[0][i, 0]
    v = np.asarray(gf._upper(t, r))
    cost = 0.5 * np.sum((v * np.triu(cross, 1)) ** 2)
    print(f"sigma_y {s}: ELBO fcvi - ucvi = {out['fcvi'][1][i] - out['ucvi'][1][i]:.3f}; 0.5 * sum of squared cross-unit entries of V = {cost:.3f}")
