"""prior_spread: function- and weight-space spread of a BNNP prior."""

import jax
import numpy as np
import pytest

from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.priors import weight_prior
from bnnp_jax.training import prior_spread


def test_function_spread_of_known_lines():
    x = np.linspace(-2, 2, 5)
    f = np.stack([a * x + b for a, b in [(1.0, 0.0), (-1.0, 2.0), (3.0, -2.0)]])
    s = prior_spread.function_spread(f, x)
    np.testing.assert_allclose(s["mean_abs_slope"], (1 + 1 + 3) / 3)
    np.testing.assert_allclose(s["mean"], 0.0, atol=1e-12)
    np.testing.assert_allclose(s["std_within_draw"], np.mean([1, 1, 3]) * x.std())
    np.testing.assert_allclose(s["std_across_draws"], np.mean(f.std(0)))
    with pytest.raises(ValueError, match="f: expected"):
        prior_spread.function_spread(f[:, :4], x)


def test_weight_spread_tracks_a_scaled_prior():
    params = bnnp.init(jax.random.PRNGKey(0), bnnp.BNNPConfig(x_dim=1, y_dim=1, hidden=(8, 8)))
    before = prior_spread.weight_spread(params)
    wider = params.replace(prior=[weight_prior.scale_std(p, params.config.prior_kind, 3.0) for p in params.prior])
    after = prior_spread.weight_spread(wider)
    for b, a in zip(before, after):
        np.testing.assert_allclose(a["mean_sd"], 3 * b["mean_sd"], rtol=1e-5)
        assert a["init_sd"] == b["init_sd"]
    # the output layer alone 3x wider: the same draws, every function value 3x
    kind = params.config.prior_kind
    last_wider = params.replace(prior=params.prior[:-1] + [weight_prior.scale_std(params.prior[-1], kind, 3.0)])
    report = prior_spread.prior_spread(jax.random.PRNGKey(1), last_wider, "sawtooth", num=16, grid_size=8)
    base = prior_spread.prior_spread(jax.random.PRNGKey(1), params, "sawtooth", num=16, grid_size=8)
    for stat in ("std_across_draws", "std_within_draw", "mean_abs_slope"):
        np.testing.assert_allclose(report["prior"][stat], 3 * base["prior"][stat], rtol=1e-4)
    assert report["generator"] == base["generator"]
