"""AIS / bidirectional Monte Carlo against the exact evidence of a model with no
hidden layer, and the HMC kernel's Metropolis correction (SPEC sections 10, 12)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.inference import ais, evidence
from bnnp_jax.inference import model as bnn


def _linear(seed=0, n=20, sigma=0.3):
    model = bnn.fixed_prior_model([2, 1], "relu", sigma)
    kx, kw, ke = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.uniform(kx, (n, 2), minval=-2.0, maxval=2.0)
    y = bnn.forward(bnn.prior_sample(kw, model), x, "relu") + sigma * jax.random.normal(ke, (n, 1))
    return model, x, y


def test_bdmc_brackets_exact_evidence(x64):
    model, x, y = _linear()
    ev = evidence.estimate(jax.random.PRNGKey(1), model, x, y, num_temps=1000, num_particles=32,
                           progress_bar=False)
    exact = float(bnn.exact_log_evidence(model, x, y))
    assert ev.exact == pytest.approx(exact)
    assert ev.upper_is_bound and ev.mode == "exact"
    # stochastic bounds: lower <= exact <= upper up to Monte-Carlo error ...
    assert ev.lower <= exact + 3 * ev.lower_stderr
    assert ev.upper >= exact - 3 * ev.upper_stderr
    # ... and tight: a well-annealed AIS on a 3-parameter Gaussian posterior is within a few tenths of a nat
    assert abs(ev.lower - exact) < 0.3 and abs(ev.upper - exact) < 0.3
    interval = evidence.kl_interval(exact - 1.0, ev)
    assert interval.exact == pytest.approx(1.0)
    assert interval.lower <= interval.upper + 6 * max(ev.lower_stderr, ev.upper_stderr)


def _gaussian_terms(theta):
    # prior N(0, I) and a log-likelihood that makes f_beta = N(0, diag(1 / (1 + beta * [4, 100])))
    return -0.5 * jnp.sum(theta**2), -0.5 * jnp.sum(jnp.array([4.0, 100.0]) * theta**2)


@pytest.mark.parametrize("step_size", [0.05, 0.25])
def test_hmc_step_leaves_tempered_target_invariant(x64, step_size):
    # 0.25 is near the leapfrog stability edge of the stiff direction (2 / sqrt(101) ~ 0.2): without a
    # real Metropolis test the chain's variance would be wrong there.
    beta, k = 0.5, 4000
    step = jax.jit(jax.vmap(lambda key, th: ais.hmc_step(key, th, beta, step_size, 10, _gaussian_terms, jnp.ones(2))))
    th = jax.random.normal(jax.random.PRNGKey(0), (k, 2)) / jnp.sqrt(1 + beta * jnp.array([4.0, 100.0]))
    accs = []
    for key in jax.random.split(jax.random.PRNGKey(1), 20):
        th, _, acc = step(jax.random.split(key, k), th)
        accs.append(acc)
    var = 1.0 / (1 + beta * jnp.array([4.0, 100.0]))
    # sample variance of k (correlated-across-steps but independent-across-chains) draws: relative sd sqrt(2 / k)
    np.testing.assert_array_less(jnp.abs(jnp.var(th, 0) / var - 1.0), 4 * np.sqrt(2 / k))
    mean_acc = float(jnp.mean(jnp.stack(accs)))
    assert 0.0 < mean_acc < 1.0 if step_size > 0.2 else mean_acc > 0.9


def test_schedules_and_validation(x64):
    for kind in ("sigmoid", "geometric"):
        b = ais.schedule(50, kind)
        assert b.shape == (51,) and float(b[0]) == 0.0 and float(b[-1]) == 1.0
        assert bool(jnp.all(jnp.diff(b) > 0))
    with pytest.raises(ValueError, match="schedule"):
        ais.schedule(10, "linearish")
    model, x, y = _linear()
    b = ais.schedule(10)
    with pytest.raises(ValueError, match="reverse"):
        ais.run(jax.random.PRNGKey(0), model, x, y, jnp.zeros((2, 3)), b, jnp.ones(11), direction="reverse")
    with pytest.raises(ValueError, match="mode"):
        evidence.estimate(jax.random.PRNGKey(0), model, x, y, mode="approximate")


def test_batched_bdmc_slices_are_the_single_runs(x64):
    """Two BDMC runs (ragged datasets, padded and masked; different sigma_y) as one vmapped
    program: each slice is the single run with the same key on its own unpadded data."""
    sizes, sigmas = (4, 6), (0.3, 1.0)
    models = [bnn.fixed_prior_model([1, 2, 1], "tanh", s) for s in sigmas]
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    xs = [jnp.linspace(-1.0, 1.0, n)[:, None] for n in sizes]
    ys = [jnp.sin(2 * x) for x in xs]
    pad = lambda a: jnp.pad(a, [(0, max(sizes) - a.shape[0]), (0, 0)])
    x, y = jnp.stack([pad(a) for a in xs]), jnp.stack([pad(a) for a in ys])
    mask = jnp.stack([jnp.arange(max(sizes)) < n for n in sizes]).astype(x.dtype)
    starts = jnp.stack([ais.tile_init(bnn.flatten(bnn.prior_sample(jax.random.PRNGKey(i), m)), 3)
                        for i, m in enumerate(models)])
    settings = dict(num_temps=6, num_particles=3, num_leapfrog=2, progress_bar=False)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *models)
    batch = ais.bdmc(keys, stacked, x, y, posterior_init=starts, mask=mask, batched=True, **settings)
    assert batch.forward.log_z.shape == (2,) and batch.betas.shape == (2, 7)
    for b in range(2):
        one = ais.bdmc(keys[b], models[b], xs[b], ys[b], posterior_init=starts[b], **settings)
        np.testing.assert_allclose(batch.betas[b], one.betas, rtol=1e-10)
        np.testing.assert_allclose(batch.step_sizes[b], one.step_sizes, rtol=1e-8)
        np.testing.assert_allclose(batch.forward.log_weights[b], one.forward.log_weights, rtol=1e-8)
        np.testing.assert_allclose(batch.reverse.log_z[b], one.reverse.log_z, rtol=1e-8)
    assert not np.allclose(batch.forward.log_weights[0], batch.forward.log_weights[1])


def test_kl_table_ais_setting_brackets_exact_evidence(x64):
    # the KL table's AIS setting (configs/kl_table.yaml, about 1/20 of 10,000 temperatures x 64
    # particles x 10 leapfrog steps) still brackets the exact evidence of a model with no hidden
    # layer, at a narrow and at a wide posterior
    from bnnp_jax.config import load_yaml
    from bnnp_jax.studies.kl_table import KLTableConfig

    a = load_yaml(KLTableConfig, "configs/kl_table.yaml").ais
    assert a.num_temps * a.num_particles * a.num_leapfrog <= 10_000 * 64 * 10 / 20
    for sigma in (0.03, 3.0):
        model, x, y = _linear(seed=4, sigma=sigma)
        ev = evidence.estimate(jax.random.PRNGKey(2), model, x, y, num_temps=a.num_temps,
                               num_particles=a.num_particles, num_leapfrog=a.num_leapfrog,
                               schedule_kind=a.schedule, progress_bar=False)
        se = float(np.hypot(ev.lower_stderr, ev.upper_stderr))
        assert ev.lower <= ev.exact + 3 * ev.lower_stderr and ev.upper >= ev.exact - 3 * ev.upper_stderr, sigma
        assert ev.lower - ev.upper <= 2 * se, sigma  # the sandwich does not cross
        assert ev.upper - ev.lower < 0.5, sigma  # and is tight on a 3-parameter Gaussian posterior
