"""The KL of your own Gaussian q against the AIS sandwich.

``KL(q || p(W | D)) = log p(D) - ELBO(q)``. Bidirectional Monte Carlo brackets
``log p(D)``: forward AIS from the prior gives a stochastic lower bound, reverse
AIS from an exact posterior sample an upper bound, so the KL of any ``q`` lies in
``[lower - ELBO, upper - ELBO]``. The data are simulated from the model itself,
so the generating weights are an exact posterior sample ("certified" mode).

``q`` here is an MFVI fit from the baseline registry and, as the route for any
Gaussian you build yourself, that fit with its standard deviations doubled: its
ELBO is the Monte-Carlo log-likelihood under your draws minus the exact
``KL(q || prior)``.

    python examples/kl_against_ais.py [--steps N] [--temps T]
"""

import argparse

import jax

import bnnp_jax
from bnnp_jax.inference import ais, evidence, vi
from bnnp_jax.inference import model as bnn


def main(steps: int = 2000, temps: int = 500, particles: int = 32, leapfrog: int = 10,
         elbo_samples: int = 2000) -> dict:
    k_w, k_x, k_eps, k_fit, k_elbo, k_q, k_ais = jax.random.split(jax.random.PRNGKey(0), 7)
    model = bnnp_jax.fixed_prior_model((1, 8, 1), activation="tanh", sigma_y=0.1)

    # 30 points simulated from the model: the generating weights w_true are an exact posterior sample.
    weights = bnn.prior_sample(k_w, model)  # per layer [D_{l-1}+1, D_l]
    x = jax.random.uniform(k_x, (30, 1), minval=-2.0, maxval=2.0)
    y = bnn.forward(weights, x, model.activation) + model.sigma_y * jax.random.normal(k_eps, (30, 1))
    w_true = bnn.flatten(weights)  # [P]

    # q from the registry: MFVI, and its ELBO.
    fit = bnnp_jax.baseline_fit("mfvi", k_fit, model, x, y, num_steps=steps, progress_bar=False)
    elbos = {"mfvi": bnnp_jax.baseline_elbo(k_elbo, fit, x, y, elbo_samples)}

    # Your own q: any Gaussian N(mean, L L^T) over the flat weights [P] (here MFVI's, scales doubled).
    mean, scale_tril = vi.flat_gaussian(fit)
    scale_tril = 2.0 * scale_tril
    draws = mean + jax.random.normal(k_q, (elbo_samples, mean.shape[0])) @ scale_tril.T  # [S, P]
    log_lik = evidence.batched_log_likelihood(model, draws, x, y)  # [S]
    kl_prior = vi.kl_flat_to_units(mean, scale_tril, model.prior_gaussians())
    elbos["mfvi_scales_x2"] = evidence.elbo_estimate(log_lik, kl_prior)

    # The sandwich on log p(D), once for every q.
    bounds = evidence.estimate(k_ais, model, x, y, "certified", posterior_init=ais.tile_init(w_true, particles),
                               num_temps=temps, num_particles=particles, num_leapfrog=leapfrog,
                               progress_bar=False)
    out = {"log_z_lower": bounds.lower, "log_z_upper": bounds.upper, "log_z_lower_stderr": bounds.lower_stderr,
           "log_z_upper_stderr": bounds.upper_stderr}
    for name, est in elbos.items():
        kl = evidence.kl_interval(est.value, bounds)
        out[name] = {"elbo": float(est.value), "elbo_stderr": float(est.stderr), "kl_lower": kl.lower,
                     "kl_upper": kl.upper}
        print(f"{name:>15}: ELBO {float(est.value):9.3f} +- {float(est.stderr):.3f}   "
              f"KL(q || posterior) in [{kl.lower:.3f}, {kl.upper:.3f}] nats")
    # Both bounds are stochastic: with a tight sandwich they may cross by about their standard errors.
    print(f"log p(D): lower {bounds.lower:.3f} +- {bounds.lower_stderr:.3f}, upper {bounds.upper:.3f} "
          f"+- {bounds.upper_stderr:.3f} (AIS, {temps} temperatures, {particles} chains)")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="MFVI optimisation steps")
    parser.add_argument("--temps", type=int, default=500, help="AIS temperatures")
    a = parser.parse_args()
    main(a.steps, a.temps)
