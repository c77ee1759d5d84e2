"""Which objective term moves the learned prior? Gradient norms of each PP-AVI term
(SPEC section 5: ctxt_ell, trgt_ppl, kl; task means) with respect to each layer's
prior means and raw scales, at the run's committed checkpoints, averaged over
fresh training batches; and the derivative of each term along one direction,
every hidden- and output-layer prior standard deviation scaled by exp(c) at c = 0
(positive: widening raises the term; the objective maximises ctxt_ell and trgt_ppl
and minimises kl). Writes prior_gradients.json beside this file. Only the newest
checkpoint is in the tree; older ones are in the run's commits
(``git show COMMIT:docs/results/sawtooth_s16/checkpoints/ckpt_000001000.pkl > FILE``).

    python docs/results/sawtooth_s16/diagnostics/prior_gradients.py [CKPT ...]
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from bnnp_jax.bnnp import objectives  # noqa: E402
from bnnp_jax.training import checkpoint, loop  # noqa: E402

RUN = Path(__file__).resolve().parents[1]
TERMS = ("ctxt_ell", "trgt_ppl", "kl")


def main(paths, num_batches: int = 4) -> dict:
    config, _, _ = loop.load_run(RUN)
    t = config.training
    untrained, _ = loop.init_state(config)
    sampler = loop.make_sampler(config)

    def term_means(prior, params, key):
        k_data, k_mc = jax.random.split(key)
        batch = sampler(k_data, t.tasks_per_step)
        out = objectives.batch_terms(k_mc, params.replace(prior=prior), batch, t.num_samples)
        return jnp.stack([jnp.mean(getattr(out, name)) for name in TERMS])

    jac = jax.jit(jax.jacrev(term_means))  # d[3 terms] / d prior
    kind = config.arch.prior_kind

    assert kind == "unitwise", kind

    def wider(p, c):  # weight_prior.scale_std by exp(c), traceable in c: log diagonal + c, strict lower * e^c
        eye = jnp.eye(p.scale.shape[-1], dtype=bool)
        return p._replace(scale=jnp.where(eye, p.scale + c, jnp.tril(p.scale, -1) * jnp.exp(c)))

    def widened(c, params, key):
        return term_means([params.prior[0]] + [wider(p, c) for p in params.prior[1:]], params, key)

    along_width = jax.jit(jax.jacrev(widened))  # d[3 terms] / d log(sd factor); reverse mode: the layers carry custom VJPs
    states = [("untrained", untrained)] + [(Path(p).stem, checkpoint.restore(p, untrained)[1]) for p in paths]
    report = {}
    for name, state in states:
        params = state.params
        rows = []
        for b in range(num_batches):
            j = jac(params.prior, params, jax.random.PRNGKey(1000 + b))
            rows.append([[[float(jnp.linalg.norm(g[i])) for g in (layer.mean, layer.scale)] for layer in j]
                         for i in range(len(TERMS))])
        norms = np.mean(rows, 0)  # [term, layer, (mean, scale)]
        width = np.mean([np.asarray(along_width(0.0, params, jax.random.PRNGKey(1000 + b)))
                         for b in range(num_batches)], 0)  # [term]
        report[name] = {term: {"layers": [{"mean": norms[i, l, 0], "scale": norms[i, l, 1]}
                                          for l in range(norms.shape[1])],
                               "d_dlog_sd_hidden_and_output": float(width[i])}
                        for i, term in enumerate(TERMS)}
        print(name, json.dumps(report[name]), flush=True)
    (Path(__file__).parent / "prior_gradients.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    ckpts = sys.argv[1:] or [str(p) for p in sorted((RUN / "checkpoints").glob("ckpt_*.pkl"))]
    main(ckpts)
