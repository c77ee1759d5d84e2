"""Dense float64 references for one layer's posterior (SPEC section 4), shared by the
layer-sampler tests: textbook per-unit formulas with explicit inverses, in both square
roots the samplers use for the draw."""

import numpy as np


def layer(rng, n, d, o, shared_prec, shared_prior):
    """A random layer: ``phi [N, D]``, ``yhat [N, O]``, ``lam [N, O|1]``, ``mu [O, D]`` and the
    prior covariance ``[O|1, D, D]``."""
    phi = rng.normal(size=(n, d))
    yhat = rng.normal(size=(n, o))
    lam = rng.uniform(0.2, 5.0, size=(n, 1 if shared_prec else o))
    a = rng.normal(size=(1 if shared_prior else o, d, d))
    cov = a @ np.swapaxes(a, -1, -2) / d + 0.3 * np.eye(d)
    mu = rng.normal(size=(o, d))
    return phi, yhat, lam, mu, cov


def posterior(phi, yhat, lam, mu, cov, eps, root="information"):
    """Per unit: the posterior mean ``m``, a draw ``m + A eps`` and ``KL(q || prior)`` -> ``(w [O, D], kl [O])``.

    ``root="information"``: ``A = chol(P)^{-T}`` with ``P`` the posterior precision.
    ``root="whitened"``: ``A = L chol(I + L^T S L)^{-T}`` with ``L = chol(cov)`` and ``S`` the data
    precision; this also checks that ``A A^T`` is the posterior covariance."""
    o, d = mu.shape
    lam = np.broadcast_to(lam, yhat.shape)
    cov = np.broadcast_to(cov, (o, d, d))
    ws, kls = [], []
    for k in range(o):
        s_data = phi.T @ np.diag(lam[:, k]) @ phi
        p0 = np.linalg.inv(cov[k])
        prec = p0 + s_data
        s = np.linalg.inv(prec)
        m = s @ (p0 @ mu[k] + phi.T @ (lam[:, k] * yhat[:, k]))
        if root == "information":
            ws.append(m + np.linalg.solve(np.linalg.cholesky(prec).T, eps[k]))
        else:
            tril = np.linalg.cholesky(cov[k])
            a = tril @ np.linalg.inv(np.linalg.cholesky(np.eye(d) + tril.T @ s_data @ tril)).T
            np.testing.assert_allclose(a @ a.T, s, rtol=1e-9, atol=1e-12)
            ws.append(m + a @ eps[k])
        dm = m - mu[k]
        kls.append(0.5 * (np.trace(p0 @ s) + dm @ p0 @ dm - d + np.linalg.slogdet(cov[k])[1] - np.linalg.slogdet(s)[1]))
    return np.stack(ws), np.array(kls)
