"""An amortised BNNP posterior inside your own jitted code.

Train a BNNP briefly with PP-AVI on BNN-prior tasks, then use its posterior
predictive inside a jitted function of your own, vmapped over a batch of new
datasets: no per-dataset optimisation, one compiled program.

    python examples/amortised_posterior_in_jit.py [--steps N]
"""

import argparse

import jax
import jax.numpy as jnp
import optax

import bnnp_jax
from bnnp_jax.data.registry import make_batch_sampler, make_sampler


def main(steps: int = 200) -> dict:
    config = bnnp_jax.BNNPConfig(hidden=(16, 16), activation="relu")
    params = bnnp_jax.init(jax.random.PRNGKey(0), config)
    sampler = make_batch_sampler("bnn_prior", n_max=40, n_range=(10, 40), hidden=(16, 16), x_range=(-3.0, 3.0), noise=0.1)
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, key):
        k_data, k_loss = jax.random.split(key)
        loss = lambda p: -bnnp_jax.pp_avi(k_loss, p, sampler(k_data, 4), num_samples=4)  # noqa: E731
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state = opt.init(params)
    for t in range(steps):
        params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(t + 1))

    # Your own code: the predictive mean and sd on a grid for each of 8 new datasets, in one program.
    @jax.jit
    def my_analysis(key, xs, ys, grid):
        def one(k, x, y):
            pred = bnnp_jax.predict(k, params, x, y, grid, 64)
            return pred.mean[:, 0], jnp.sqrt(pred.variance[:, 0])

        return jax.vmap(one)(jax.random.split(key, xs.shape[0]), xs, ys)

    # 8 new datasets of 20 points each (tasks x [T, N, 1], y [T, N, 1]; the validity mask is all ones here)
    xs, ys, _ = make_sampler("bnn_prior", n_max=20, n_range=(20, 21), hidden=(16, 16), x_range=(-3.0, 3.0),
                             noise=0.1)(jax.random.PRNGKey(123), 8)
    grid = jnp.linspace(-3.0, 3.0, 50)[:, None]
    mean, sd = my_analysis(jax.random.PRNGKey(7), xs, ys, grid)
    out = {"final_loss": float(loss), "mean_shape": tuple(mean.shape), "mean_sd": float(sd.mean())}
    print(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    main(parser.parse_args().steps)
