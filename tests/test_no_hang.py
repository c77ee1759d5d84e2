"""A user's jitted program that calls the BNNP's posterior beside its own batched
``jnp.linalg`` calls finishes (README, "Nothing hangs"). Run in a subprocess with a
time limit, so a hang fails the test instead of stalling the suite.

jaxlib's CPU LAPACK kernels split a batch over XLA's intra-op thread pool and wait
on a pool thread; two of them running at once can starve a 2-thread pool. The
library chains its own calls (bnnp_jax.core.linalg); a user program chains its
calls after ours with :func:`bnnp_jax.core.linalg.after`, which is what this runs,
and the compiled program is checked to hold no unordered pair of LAPACK calls.
"""

import subprocess
import sys
import textwrap

from test_robustness_common import subprocess_env

PROGRAM = textwrap.dedent("""
    import jax, jax.numpy as jnp
    from bnnp_jax.bnnp import model as bnnp
    from bnnp_jax.core.lapack_order import unordered_lapack_calls
    from bnnp_jax.core.linalg import after

    params = bnnp.init(jax.random.PRNGKey(0), bnnp.BNNPConfig(hidden=(24, 24)))
    x = jnp.linspace(-2, 2, 40)[:, None]
    y = jnp.sin(3 * x)
    a = jax.random.normal(jax.random.PRNGKey(1), (512, 24, 24))
    spd = a @ jnp.swapaxes(a, -1, -2) + 24 * jnp.eye(24)

    @jax.jit
    def user_program(key, spd):
        post = bnnp.posterior_samples(key, params, x[:12], y[:12], 64)  # dual form: N = 12 < 25
        spd = after(spd, post)  # the user's linalg after ours
        own = jnp.linalg.cholesky(spd)
        return post.kl + jnp.sum(jnp.log(jnp.diagonal(own, axis1=-2, axis2=-1)))

    assert unordered_lapack_calls(user_program.lower(jax.random.PRNGKey(0), spd).compile().as_text()) == []
    for i in range(3):
        value = user_program(jax.random.PRNGKey(i), spd).block_until_ready()
    grad = jax.jit(jax.grad(lambda s: user_program(jax.random.PRNGKey(0), s)))(spd).block_until_ready()
    print("finished", float(value), bool(jnp.all(jnp.isfinite(grad))))
""")


def test_user_program_with_own_linalg_finishes():
    proc = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300,
                          env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finished" in proc.stdout and proc.stdout.strip().endswith("True"), proc.stdout
