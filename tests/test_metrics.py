"""Metrics against float64 NumPy/SciPy references and known distributions.

Binomial and Monte-Carlo checks use 4-standard-error tolerances with fixed seeds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, special, stats

from bnnp_jax import metrics

KEY = jax.random.PRNGKey(0)


def _problem(rng, s=7, n=11, dy=2):
    f = rng.normal(size=(s, n, dy))
    sigma = rng.uniform(0.3, 1.5, size=dy)
    y = rng.normal(size=(n, dy)) * 1.5
    mask = (rng.uniform(size=n) < 0.7).astype(float)
    mask[0] = 1.0
    return f, sigma, y, mask


def _reference(f, sigma, y, mask, level=0.9):
    """Slow float64 references: explicit loops, SciPy densities, root-found mixture quantiles."""
    lp = stats.norm.logpdf(y[None], f, sigma).sum(-1)  # [S, N]
    real = mask > 0
    lpd = (special.logsumexp(lp, axis=0) - np.log(len(f)))[real].mean()
    eld = lp.mean(0)[real].mean()
    joint = special.logsumexp(lp[:, real].sum(1)) - np.log(len(f))
    mae = np.abs(y - f.mean(0)).mean(-1)[real].mean()
    inside = []
    for n in np.flatnonzero(real):
        for d in range(y.shape[1]):
            cdf = lambda t: stats.norm.cdf(t, f[:, n, d], sigma[d]).mean()  # noqa: E731
            lo_t, hi_t = f[:, n, d].min() - 20 * sigma[d], f[:, n, d].max() + 20 * sigma[d]
            q_lo = optimize.brentq(lambda t: cdf(t) - (1 - level) / 2, lo_t, hi_t, xtol=1e-12)
            q_hi = optimize.brentq(lambda t: cdf(t) - (1 + level) / 2, lo_t, hi_t, xtol=1e-12)
            inside.append(q_lo <= y[n, d] <= q_hi)
    return {"log_predictive_density": lpd, "expected_log_density": eld, "joint_log_likelihood": joint,
            "mae": mae, "coverage": np.mean(inside)}


def test_metrics_match_float64_references(x64):
    for seed in range(3):
        f, sigma, y, mask = _problem(np.random.default_rng(seed))
        got = metrics.summary(*(jnp.asarray(a) for a in (f, sigma, y, mask)))
        ref = _reference(f, sigma, y, mask)
        for k, v in ref.items():
            assert got[k].dtype == jnp.float64
            np.testing.assert_allclose(float(got[k]), v, rtol=1e-12, atol=1e-12, err_msg=k)


def test_single_sample_closed_forms(x64):
    """With S = 1 the mixture is one Gaussian: every density is a plain log N."""
    f, sigma, y, mask = _problem(np.random.default_rng(5), s=1)
    lp = stats.norm.logpdf(y, f[0], sigma).sum(-1)
    args = [jnp.asarray(a) for a in (f, sigma, y, mask)]
    np.testing.assert_allclose(metrics.log_predictive_density(*args), lp[mask > 0].mean(), rtol=1e-12)
    np.testing.assert_allclose(metrics.expected_log_density(*args), lp[mask > 0].mean(), rtol=1e-12)
    np.testing.assert_allclose(metrics.joint_log_likelihood(*args), lp[mask > 0].sum(), rtol=1e-12)


def test_padding_is_ignored_and_vmap_jit_agree():
    f, sigma, y, mask = (jnp.asarray(a, jnp.float32) for a in _problem(np.random.default_rng(1)))
    base = metrics.summary(f, sigma, y, mask)
    pad = mask == 0
    y_bad = jnp.where(pad[:, None], jnp.nan, y)
    f_bad = jnp.where(pad[None, :, None], 1e6, f)
    other = metrics.summary(f_bad, sigma, y_bad, mask)
    for k in base:
        assert np.isfinite(float(other[k])), k
        np.testing.assert_allclose(other[k], base[k], rtol=1e-6, err_msg=k)
    tasks = [_problem(np.random.default_rng(s)) for s in (2, 3, 4)]
    stacked = [jnp.asarray(np.stack([t[i] for t in tasks]), jnp.float32) for i in range(4)]
    batched = jax.jit(jax.vmap(metrics.summary))(*stacked)
    for t, task in enumerate(tasks):
        eager = metrics.summary(*(jnp.asarray(a, jnp.float32) for a in task))
        for k in eager:
            np.testing.assert_allclose(batched[k][t], eager[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert np.isnan(float(metrics.mae(f, y, jnp.zeros_like(mask))))  # nothing to average: NaN, not 0


def test_coverage_well_specified_and_misspecified(x64):
    """y drawn from the predictive mixture itself: coverage ~ Binomial(n, 0.9) / n exactly.
    With y's noise doubled, coverage is 2 Phi(1.645 / 2) - 1 for a one-component mixture."""
    rng = np.random.default_rng(7)
    n, s, sigma = 4000, 5, np.array([0.4])
    f = rng.normal(size=(s, n, 1))
    comp = rng.integers(0, s, size=n)
    y = f[comp, np.arange(n)] + sigma * rng.normal(size=(n, 1))
    cov = float(metrics.coverage(jnp.asarray(f), jnp.asarray(sigma), jnp.asarray(y), jnp.ones(n)))
    assert abs(cov - 0.9) < 4 * np.sqrt(0.9 * 0.1 / n)
    mu = rng.normal(size=(1, n, 1))
    y_wide = mu[0] + 2 * sigma * rng.normal(size=(n, 1))
    p = 2 * stats.norm.cdf(stats.norm.ppf(0.95) / 2) - 1
    cov = float(metrics.coverage(jnp.asarray(mu), jnp.asarray(sigma), jnp.asarray(y_wide), jnp.ones(n)))
    assert abs(cov - p) < 4 * np.sqrt(p * (1 - p) / n)
    with pytest.raises(ValueError, match="level"):
        metrics.coverage(jnp.asarray(mu), jnp.asarray(sigma), jnp.asarray(y_wide), jnp.ones(n), level=1.0)


def test_shape_errors():
    f, sigma, y, mask = (jnp.asarray(a) for a in _problem(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="mask"):
        metrics.log_predictive_density(f, sigma, y, mask[:-1])
    with pytest.raises(ValueError, match="sigma_y"):
        metrics.coverage(f, jnp.ones(3), y, mask)
    with pytest.raises(ValueError, match="f must be"):
        metrics.mae(f[0], y, mask)


def _mmd_reference(a, b, ell):
    """Unbiased MMD^2 by explicit double loops over pairs (float64)."""
    k = lambda u, v: np.exp(-np.sum((u - v) ** 2) / (2 * ell**2))  # noqa: E731
    A, B = len(a), len(b)
    kaa = sum(k(a[i], a[j]) for i in range(A) for j in range(A) if i != j) / (A * (A - 1))
    kbb = sum(k(b[i], b[j]) for i in range(B) for j in range(B) if i != j) / (B * (B - 1))
    kab = sum(k(a[i], b[j]) for i in range(A) for j in range(B)) / (A * B)
    return kaa + kbb - 2 * kab


def test_mmd_matches_reference_and_median_heuristic(x64):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(12, 5)), rng.normal(0.3, 1.2, size=(9, 5))
    np.testing.assert_allclose(metrics.mmd(None, a, b, lengthscale=1.7), _mmd_reference(a, b, 1.7), rtol=1e-10)
    pooled = np.concatenate([a, b])
    ell = np.median(np.sqrt(((pooled[:, None] - pooled[None]) ** 2).sum(-1))[np.triu_indices(21, 1)])
    np.testing.assert_allclose(metrics.mmd(None, a, b), _mmd_reference(a, b, ell), rtol=1e-10)
    # [A, G, 1] samples (as from true_function_samples) flatten to [A, G].
    np.testing.assert_allclose(metrics.mmd(None, a[..., None], b[..., None]), metrics.mmd(None, a, b), rtol=1e-12)
    with pytest.raises(ValueError, match="samples_a"):
        metrics.mmd(None, a[:1], b)


def test_mmd_unbiased_against_gaussian_closed_form(x64):
    """A ~ N(0, s^2 I_G), B ~ N(delta, s^2 I_G): with an RBF kernel of lengthscale l,
    MMD^2 = 2 c^G (1 - exp(-|delta|^2 / (2 (l^2 + 2 s^2)))), c = sqrt(l^2 / (l^2 + 2 s^2)).
    The mean of 40 independent unbiased estimates must match it within 4 standard errors,
    and so must the identical-distribution case (MMD^2 = 0)."""
    g, s, ell, n, reps = 3, 1.0, 2.0, 100, 40
    delta = np.full(g, 0.4)
    c = np.sqrt(ell**2 / (ell**2 + 2 * s**2))
    truth = 2 * c**g * (1 - np.exp(-delta @ delta / (2 * (ell**2 + 2 * s**2))))
    keys = jax.random.split(KEY, reps)

    def estimate(k, shift):
        ka, kb = jax.random.split(k)
        a = s * jax.random.normal(ka, (n, g), jnp.float64)
        b = shift + s * jax.random.normal(kb, (n, g), jnp.float64)
        return metrics.mmd(None, a, b, lengthscale=ell)

    batch = jax.jit(jax.vmap(estimate, in_axes=(0, None)))
    for shift, expected in ((jnp.asarray(delta), truth), (jnp.zeros(g), 0.0)):
        est = np.asarray(batch(keys, shift))
        se = est.std(ddof=1) / np.sqrt(reps)
        assert abs(est.mean() - expected) < 4 * se
        if expected > 0:
            assert expected > 8 * se  # the test can tell this case from MMD^2 = 0


def test_mmd_permutation_test_on_gp_like_functions(x64):
    """Function samples on a grid: same law -> large p-value; different lengthscales -> tiny p."""
    grid = jnp.linspace(-2, 2, 20)[:, None]

    def draws(key, ell, num):
        k = jnp.exp(-0.5 * (grid - grid.T) ** 2 / ell**2) + 1e-4 * jnp.eye(20)
        return jax.random.normal(key, (num, 20), jnp.float64) @ jnp.linalg.cholesky(k).T

    ka, kb, kc, kt = jax.random.split(KEY, 4)
    a, b, c = draws(ka, 0.5, 250), draws(kb, 0.5, 250), draws(kc, 2.0, 250)
    same, p_same = metrics.mmd_permutation_test(kt, a, b, num_permutations=200)
    diff, p_diff = metrics.mmd_permutation_test(kt, a, c, num_permutations=200)
    assert float(p_same) > 0.01 and float(p_diff) <= 0.01
    assert float(diff) > 0 and float(diff) > 10 * abs(float(same))
    np.testing.assert_allclose(same, metrics.mmd(kt, a, b), rtol=1e-9)  # label algebra == block sums
