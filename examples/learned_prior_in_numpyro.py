"""A (learned) BNNP prior in your own numpyro NUTS.

``bnnp_jax.from_bnnp`` turns a BNNP's prior and noise level into a
``BNNModel``; ``bnnp_jax.numpyro_model`` is that model as a numpyro model, so
any numpyro inference (NUTS here, or SVI) runs on it. Pass a run directory to
use a trained prior (``bnnp_jax.load_run``); without one, the untrained prior.

    python examples/learned_prior_in_numpyro.py [--run RUN_DIR] [--samples N]
"""

import argparse

import jax
import jax.numpy as jnp
from numpyro.infer import MCMC, NUTS, Predictive

import bnnp_jax


def main(run: str | None = None, samples: int = 200) -> dict:
    if run is not None:
        _, params, _ = bnnp_jax.load_run(run)
    else:
        params = bnnp_jax.init(jax.random.PRNGKey(0), bnnp_jax.BNNPConfig(hidden=(8, 8)))
    model = bnnp_jax.from_bnnp(params)
    x = jnp.linspace(-2.0, 2.0, 15)[:, None]
    y = jnp.sin(2 * x) + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape)

    mcmc = MCMC(NUTS(bnnp_jax.numpyro_model), num_warmup=samples, num_samples=samples, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(2), model, x, y)
    weights = mcmc.get_samples()
    grid = jnp.linspace(-2.0, 2.0, 30)[:, None]
    # Posterior predictive draws of y on a grid: numpyro's Predictive reruns the model per draw.
    f = Predictive(bnnp_jax.numpyro_model, weights, return_sites=["y"])(jax.random.PRNGKey(3), model, grid)["y"]
    out = {"sites": sorted(weights), "draws": int(f.shape[0]), "predictive_mean_at_0": float(f[:, 15, 0].mean())}
    print(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default=None)
    parser.add_argument("--samples", type=int, default=200)
    a = parser.parse_args()
    main(a.run, a.samples)
