"""MetaPrior code variants (paper sec. 5.3): one-hot unit codes (Gaussian-OH) and point-estimated
codes, each against the latent-variable (Gaussian-LV) model at the corresponding codes."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.metaprior import codes as mc
from bnnp_jax.metaprior import model as mp
from bnnp_jax.metaprior.fit import FitConfig, code_mask, fit, illate
from bnnp_jax.metaprior.hypernet import HyperNet, concatenated_reference


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


elbo = jax.jit(mp.elbo, static_argnames=("config", "num_samples"))


def _data(widths, n=7, dtype=jnp.float64):
    x = jax.random.normal(jax.random.PRNGKey(11), (n, widths[0]), dtype)
    y = jnp.arange(n) % widths[-1]
    return x, y


def _latent_twin(params: mp.MetaPriorParams, cfg: mp.MetaPriorConfig, means: list, glob) -> tuple:
    """The latent model with code means ``means`` (and ``glob``), zero code std, and ``params``'s g."""
    lcfg = mp.MetaPriorConfig(widths=cfg.widths, code_dim=means[0].shape[1], global_dim=glob.shape[0],
                              hyper_hidden=cfg.hyper_hidden, head=cfg.head, noise_dim=cfg.noise_dim,
                              likelihood=cfg.likelihood)
    zero_sd = lambda m: jnp.full_like(m, -jnp.inf)  # noqa: E731  exp(-inf) = 0: z = mu exactly
    codes = mc.Codes(tuple(mc.CodeQ(m, zero_sd(m)) for m in means), mc.CodeQ(glob, zero_sd(glob)))
    # the twin's own init has g's parameter tree: the variants share g's layout
    ref = jax.eval_shape(lambda k: mp.init(k, lcfg, jnp.float64), jax.random.PRNGKey(0))
    assert jax.tree.structure(ref.hyper) == jax.tree.structure(params.hyper)
    assert jax.tree.map(jnp.shape, ref.hyper) == jax.tree.map(jnp.shape, params.hyper)
    return lcfg, mp.MetaPriorParams(codes, params.hyper, params.raw_sigma)


def _one_hot_means(widths):
    eye = jnp.eye(sum(widths), dtype=jnp.float64)
    return list(jnp.split(eye, np.cumsum(widths)[:-1]))


# ----- one-hot codes -------------------------------------------------------------------------


@pytest.mark.parametrize("hidden,noise_dim", [((8,), 0), ((8, 6), 0), ((5,), 3)])
def test_embedding_lookup_equals_one_hot_codes_through_concatenated_layer(x64, hidden, noise_dim):
    u = 9
    net = HyperNet(hidden=hidden, out_features=2, noise_dim=noise_dim, num_units=u)
    idx_out, idx_in = jnp.array([4, 5, 6, 8]), jnp.array([0, 1, 2])
    noise = jax.random.normal(jax.random.PRNGKey(1), (4, 4, noise_dim), jnp.float64) if noise_dim else None
    params = net.init(jax.random.PRNGKey(0), idx_out, idx_in, None, noise)
    params = jax.tree.map(lambda a: a + 0.1, params)  # nonzero first-layer bias
    assert params["params"]["first_out"]["kernel"].shape == (u, hidden[0])
    assert params["params"]["first_in"]["kernel"].shape == (u, hidden[0])
    fast = net.apply(params, idx_out, idx_in, None, noise)
    slow = concatenated_reference(net, params, jax.nn.one_hot(idx_out, u, dtype=jnp.float64),
                                  jax.nn.one_hot(idx_in, u, dtype=jnp.float64), None, noise)
    assert fast.shape == (4, 4, 2)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("head", ["gaussian", "implicit"])
def test_one_hot_model_equals_latent_model_at_one_hot_means(x64, head):
    cfg = mp.MetaPriorConfig(widths=(3, 5, 2), codes="one_hot", head=head, noise_dim=2, hyper_hidden=(16,))
    params = mp.init(jax.random.PRNGKey(0), cfg, jnp.float64)
    assert params.codes is None
    lcfg, lparams = _latent_twin(params, cfg, _one_hot_means(cfg.widths), jnp.zeros(0, jnp.float64))
    z_oh, z_lv = mp.point_codes(params, cfg), mc.mean_codes(lparams.codes)
    assert [z.tolist() for z in z_oh.units] == [[0, 1, 2], [3, 4, 5, 6, 7], [8, 9]]
    if head == "gaussian":
        for (m, s), (m_ref, s_ref) in zip(mp.weight_moments(params.hyper, cfg, z_oh),
                                          mp.weight_moments(lparams.hyper, lcfg, z_lv)):
            assert m.shape == m_ref.shape and m.dtype == jnp.float64
            np.testing.assert_allclose(m, m_ref, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(s, s_ref, rtol=1e-12)
    x, y = _data(cfg.widths)
    # same key: the latent model's code draws are its means (zero std), the weight noise is shared
    value, ell = elbo(jax.random.PRNGKey(2), params, cfg, x, y, num_samples=3)
    _, ell_ref = elbo(jax.random.PRNGKey(2), lparams, lcfg, x, y, num_samples=3)
    assert float(value) == float(ell)  # no code KL
    np.testing.assert_allclose(ell, ell_ref, rtol=1e-12)
    out = mp.predict(jax.random.PRNGKey(3), params, cfg, x, 4)
    np.testing.assert_allclose(out, mp.predict(jax.random.PRNGKey(3), lparams, lcfg, x, 4), rtol=1e-12, atol=1e-13)


def test_one_hot_gradients_reach_used_embedding_rows_only(x64):
    cfg = mp.MetaPriorConfig(widths=(3, 5, 2), codes="one_hot", hyper_hidden=(16,))
    params = mp.init(jax.random.PRNGKey(0), cfg, jnp.float64)
    lcfg, lparams = _latent_twin(params, cfg, _one_hot_means(cfg.widths), jnp.zeros(0, jnp.float64))
    x, y = _data(cfg.widths)
    grad = jax.jit(jax.grad(lambda h: mp.elbo(jax.random.PRNGKey(2), params._replace(hyper=h), cfg, x, y,
                                              num_samples=2)[0]))(params.hyper)
    grad_ref = jax.jit(jax.grad(lambda h: mp.elbo(jax.random.PRNGKey(2), lparams._replace(hyper=h), lcfg, x, y,
                                                  num_samples=2)[1]))(lparams.hyper)
    for g, g_ref in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_ref)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-13)
    a, b = grad["params"]["first_out"]["kernel"], grad["params"]["first_in"]["kernel"]
    row_norms = lambda k: np.linalg.norm(np.asarray(k), axis=1)  # noqa: E731
    # receivers are units of layers 1..L (rows 3..9), senders of layers 0..L-1 (rows 0..7)
    assert np.all(row_norms(a)[3:] > 0) and np.all(row_norms(a)[:3] == 0)
    assert np.all(row_norms(b)[:8] > 0) and np.all(row_norms(b)[8:] == 0)
    assert float(jnp.abs(grad["params"]["head"]["kernel"]).sum()) > 0


def test_one_hot_fit_trains_g_and_refuses_illation():
    cfg = mp.MetaPriorConfig(widths=(3, 6, 2), codes="one_hot")
    params = mp.init(jax.random.PRNGKey(0), cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (40, 3))
    y = (x[:, 0] > 0).astype(jnp.int32)
    new, trace = fit(jax.random.PRNGKey(2), params, cfg, FitConfig(steps=200, lr=0.02, chunk=100), x, y,
                     progress=False)
    assert new.codes is None
    assert not np.array_equal(new.hyper["params"]["first_out"]["kernel"], params.hyper["params"]["first_out"]["kernel"])
    assert float(trace[-20:].mean()) > float(trace[:20].mean()) + 0.1
    with pytest.raises(ValueError, match="one_hot"):
        illate(jax.random.PRNGKey(3), new, cfg, FitConfig(steps=2), x, y)
    with pytest.raises(ValueError, match="train_model"):
        fit(jax.random.PRNGKey(3), new, cfg, FitConfig(steps=2), x, y, train_model=False, progress=False)
    with pytest.raises(ValueError, match="em_period"):
        fit(jax.random.PRNGKey(3), new, cfg, FitConfig(steps=2, em_period=1), x, y, progress=False)
    latent = mp.MetaPriorConfig(widths=(3, 6, 2))
    with pytest.raises(ValueError, match="params.codes"):
        fit(jax.random.PRNGKey(3), new, latent, FitConfig(steps=2), x, y, progress=False)


# ----- point-estimated codes -----------------------------------------------------------------


def test_point_objective_is_latent_likelihood_at_zero_code_std(x64):
    cfg = mp.MetaPriorConfig(widths=(2, 4, 3), global_dim=2, codes="point", hyper_hidden=(16,))
    params = mp.init(jax.random.PRNGKey(0), cfg, jnp.float64)
    assert all(q.log_std is None for q in list(params.codes.units) + [params.codes.glob])
    means = [q.mean for q in params.codes.units]
    lcfg, lparams = _latent_twin(params, cfg, means, params.codes.glob.mean)
    x, y = _data(cfg.widths, n=8)
    w = jnp.array([1.0, 1, 0, 1, 1, 0, 1, 1])
    value, ell = elbo(jax.random.PRNGKey(2), params, cfg, x, y, w, 1.5, num_samples=3)
    _, ell_ref = elbo(jax.random.PRNGKey(2), lparams, lcfg, x, y, w, 1.5, num_samples=3)
    assert value.dtype == jnp.float64 and float(value) == float(ell)  # no code KL
    np.testing.assert_allclose(ell, ell_ref, rtol=1e-12)
    # the same holds for the gradient in the codes: no KL pull towards N(0, I)
    grad = jax.jit(jax.grad(lambda c: mp.elbo(jax.random.PRNGKey(2), params._replace(codes=c), cfg, x, y, w,
                                              num_samples=3)[0]))(params.codes)

    def latent_ell(means_, glob_):
        codes = mc.Codes(tuple(q._replace(mean=m) for q, m in zip(lparams.codes.units, means_)),
                         lparams.codes.glob._replace(mean=glob_))
        return mp.elbo(jax.random.PRNGKey(2), lparams._replace(codes=codes), lcfg, x, y, w, num_samples=3)[1]

    g_means, g_glob = jax.jit(jax.grad(latent_ell, argnums=(0, 1)))(means, params.codes.glob.mean)
    for q, g_ref in zip(grad.units, g_means):
        assert float(jnp.abs(q.mean).sum()) > 0
        np.testing.assert_allclose(q.mean, g_ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grad.glob.mean, g_glob, rtol=1e-10, atol=1e-13)


def test_point_codes_are_not_sampled():
    for codes, same in (("point", True), ("latent", False)):
        cfg = mp.MetaPriorConfig(widths=(2, 4, 2), codes=codes, init_code_std=0.5)
        params = mp.init(jax.random.PRNGKey(0), cfg)
        out = mp.predict(jax.random.PRNGKey(1), params, cfg, jnp.eye(2), 2, weight_noise=False)
        assert np.array_equal(out[0], out[1]) == same, codes
    point = mp.init(jax.random.PRNGKey(0), mp.MetaPriorConfig(widths=(2, 3), codes="point"))
    with pytest.raises(ValueError, match="point estimates"):
        mc.sample_codes(jax.random.PRNGKey(0), point.codes)


@pytest.mark.parametrize("which,changed", [("input", {0}), ("output", {2}), ("hidden", {1}), ("all", {0, 1, 2})])
def test_point_illation_leaves_other_codes_bit_identical(which, changed):
    cfg = mp.MetaPriorConfig(widths=(3, 6, 2), global_dim=2, codes="point")
    params = mp.init(jax.random.PRNGKey(0), cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (20, 3))
    y = (x[:, 0] > 0).astype(jnp.int32)
    new, trace = illate(jax.random.PRNGKey(2), params, cfg, FitConfig(steps=20, lr=0.05, chunk=10), x, y, which=which)
    assert trace.shape == (20,)
    for l, (a, b) in enumerate(zip(params.codes.units, new.codes.units)):
        assert b.log_std is None
        assert np.array_equal(a.mean, b.mean) == (l not in changed), (which, l)
    assert np.array_equal(params.codes.glob.mean, new.codes.glob.mean) == (which != "all")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params.hyper), jax.tree.leaves(new.hyper)))
    with pytest.raises(ValueError, match="prior='posterior'"):
        illate(jax.random.PRNGKey(2), params, cfg, FitConfig(steps=2), x, y, which=which, prior="posterior")


# ----- layout and validation -----------------------------------------------------------------


def test_latent_layout_unchanged_and_masks_follow_the_variant():
    cfg = mp.MetaPriorConfig(widths=(3, 4, 2), code_dim=5, global_dim=2, hyper_hidden=(7,))
    params = mp.init(jax.random.PRNGKey(0), cfg)
    assert jax.tree.map(jnp.shape, params.codes) == mc.Codes(
        (mc.CodeQ((3, 5), (3, 5)), mc.CodeQ((4, 5), (4, 5)), mc.CodeQ((2, 5), (2, 5))), mc.CodeQ((2,), (2,)))
    assert params.hyper["params"]["first_out"]["kernel"].shape == (5, 7)
    assert params.hyper["params"]["first_in"]["kernel"].shape == (5, 7)
    point = mp.init(jax.random.PRNGKey(0), mp.MetaPriorConfig(widths=(3, 4, 2), code_dim=5, global_dim=2,
                                                              hyper_hidden=(7,), codes="point"))
    for q, p in zip(params.codes.units, point.codes.units):  # same draws of the means
        np.testing.assert_array_equal(q.mean, p.mean)
    mask = code_mask(point.codes, "output")
    assert jax.tree.structure(mask) == jax.tree.structure(point.codes)
    assert [bool(q.mean) for q in mask.units] == [False, False, True]
    assert code_mask(None, "all") is None


@pytest.mark.parametrize("kwargs,match", [({"codes": "onehot"}, "codes"), ({"codes": None}, "codes"),
                                          ({"codes": "one_hot", "global_dim": 2}, "global_dim")])
def test_code_variant_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mp.MetaPriorConfig(widths=(2, 3, 1), **kwargs)


def test_variant_misuse_errors():
    x, y = jnp.ones((4, 2)), jnp.array([0, 1, 0, 1])
    cfg = mp.MetaPriorConfig(widths=(2, 3, 2), codes="point")
    params = mp.init(jax.random.PRNGKey(0), cfg)
    latent = mp.init(jax.random.PRNGKey(0), mp.MetaPriorConfig(widths=(2, 3, 2)))
    with pytest.raises(ValueError, match="code_prior"):
        mp.elbo(jax.random.PRNGKey(0), params, cfg, x, y, code_prior=latent.codes)
    with pytest.raises(ValueError, match="code_prior"):
        fit(jax.random.PRNGKey(0), params, cfg, FitConfig(steps=1), x, y, code_prior=latent.codes, progress=False)
    with pytest.raises(ValueError, match="log_std"):
        mc.code_kl(params.codes)
    one_hot = mp.MetaPriorConfig(widths=(2, 3, 2), codes="one_hot")
    with pytest.raises(ValueError, match="params.codes"):
        mp.point_codes(params, one_hot)


def test_cli_codes_flag_is_digits_only(tmp_path):
    from bnnp_jax.studies.metaprior import experiments as me

    parser = argparse.ArgumentParser()
    me.add_arguments(parser)
    assert parser.parse_args(["digits", "--codes", "one_hot"]).codes == "one_hot"
    with pytest.raises(SystemExit):
        parser.parse_args(["digits", "--codes", "onehot"])
    with pytest.raises(ValueError, match="--codes"):
        me.run(parser.parse_args(["moons", "--quick", "--codes", "point", "--out", str(tmp_path)]))
    cfg = tmp_path / "moons.yaml"
    cfg.write_text("model: {codes: point}\n")
    with pytest.raises(ValueError, match="model.codes"):
        me.run(parser.parse_args(["moons", "--config", str(cfg), "--out", str(tmp_path)]))
