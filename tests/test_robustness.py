"""Issue 8, part 1 (library side): the public functions (``bnnp_jax.predict`` and friends),
the file readers and the data loaders reject bad input with a ``ValueError``
that names the argument; valid edge cases (empty or one-point context, lists,
float64 data, oversize batches) work; the jitted core carries no checks.

Every rejected case fails before any compilation, so the table is cheap; the
valid cases share four compilations of the tiny model.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_robustness_common import shared_run

import bnnp_jax
from bnnp_jax import validation
from bnnp_jax.bnnp import model as bnnp
from bnnp_jax.data import images, precipitation, registry

KEY = jax.random.PRNGKey(0)
S = 3
X = np.linspace(-1.0, 1.0, 5, dtype=np.float32)[:, None]
Y = np.sin(3 * X)
XT = np.linspace(-1.5, 1.5, 4, dtype=np.float32)[:, None]
EMPTY = np.zeros((0, 1), np.float32)


@pytest.fixture(scope="module")
def params():
    return shared_run()[2].params


def _set(a, idx, value):
    a = np.array(a, copy=True)
    a[idx] = value
    return a


# (case id, argument overrides, expected message pattern)
BAD_PREDICT = [
    ("nan_in_x_c", {"x_c": _set(X, (2, 0), np.nan)}, r"^x_c: contains 1 non-finite value.*index \(2, 0\)"),
    ("inf_in_y_c", {"y_c": _set(Y, (0, 0), np.inf)}, r"^y_c: contains 1 non-finite"),
    ("neg_inf_in_x_t", {"x_t": _set(XT, (3, 0), -np.inf)}, r"^x_t: contains 1 non-finite"),
    ("float32_overflow", {"x_c": _set(X.astype(np.float64), (1, 0), 1e39)}, r"^x_c: .*after conversion.*float32"),
    ("x_c_rank1", {"x_c": X[:, 0]}, r"^x_c: expected a rank-2 array \[N, x_dim\], got shape \(5,\).*a\[:, None\]"),
    ("y_c_rank3", {"y_c": Y[None]}, r"^y_c: expected a rank-2 array \[N, y_dim\]"),
    ("x_t_rank0", {"x_t": np.float32(1.0)}, r"^x_t: expected a rank-2"),
    ("n_mismatch", {"y_c": Y[:4]}, r"^x_c has 5 points but y_c has 4"),
    ("x_dim_mismatch_context", {"x_c": np.hstack([X, X])}, r"^x_c: x_dim .* is 2 .*model expects 1"),
    ("x_dim_mismatch_targets", {"x_t": np.hstack([XT, XT])}, r"^x_t: x_dim .* is 2 .*model expects 1"),
    ("y_dim_mismatch", {"y_c": np.hstack([Y, Y])}, r"^y_c: y_dim .* is 2 .*model expects 1"),
    ("integer_x_c", {"x_c": np.arange(5)[:, None]}, r"^x_c: .*integer dtype int64; convert with .astype\(float\)"),
    ("boolean_y_c", {"y_c": Y > 0}, r"^y_c: .*boolean dtype"),
    ("complex_x_t", {"x_t": XT + 1j}, r"^x_t: .*complex dtype"),
    ("string_x_c", {"x_c": np.array([["a"]] * 5)}, r"^x_c: .*string dtype"),
    ("ragged_x_c", {"x_c": [[0.0], [1.0, 2.0]]}, r"^x_c: (cannot be converted|expected a numeric)"),
    ("none_y_c", {"y_c": None}, r"^y_c: expected an array, got None"),
    ("num_samples_zero", {"num_samples": 0}, r"^num_samples: must be a positive integer, got 0"),
    ("num_samples_negative", {"num_samples": -2}, r"^num_samples: must be a positive integer"),
    ("num_samples_float", {"num_samples": 2.0}, r"^num_samples: must be a positive integer, got 2.0 of type float"),
    ("num_samples_bool", {"num_samples": True}, r"^num_samples: must be a positive integer"),
    ("batch_size_zero", {"batch_size": 0}, r"^batch_size: must be a positive integer, got 0"),
    ("batch_size_negative", {"batch_size": -4}, r"^batch_size: must be a positive integer"),
    ("batch_size_float", {"batch_size": 2.5}, r"^batch_size: must be a positive integer"),
    ("key_int", {"key": 0}, r"^key: expected a PRNG key, got int 0; pass jax.random.PRNGKey"),
    ("key_float", {"key": jnp.zeros(2)}, r"^key: expected a PRNG key \(uint32 of shape \(2,\)\), got float32"),
    ("key_batch", {"key": jax.random.split(KEY, 3)}, r"^key: .*shape \(3, 2\)"),
    ("typed_key_batch", {"key": jax.random.split(jax.random.key(0), 3)}, r"^key: expected a single key"),
    ("params_dict", {"params": {"prior": []}}, r"^params: expected BNNPParams .* got dict"),
]


def _predict_args(model, **over):
    args = dict(key=KEY, params=model, x_c=X, y_c=Y, x_t=XT, num_samples=S, batch_size=None)
    args.update(over)
    return args


@pytest.mark.parametrize("case,over,match", BAD_PREDICT, ids=[c[0] for c in BAD_PREDICT])
def test_predict_rejects_bad_input(params, case, over, match):
    with pytest.raises(ValueError, match=match):
        bnnp_jax.predict(**_predict_args(params, **over))


@pytest.mark.parametrize("case,over,match", [c for c in BAD_PREDICT if "x_t" not in c[1]],
                         ids=[c[0] for c in BAD_PREDICT if "x_t" not in c[1]])
def test_posterior_samples_rejects_bad_input(params, case, over, match):
    args = _predict_args(params, **over)
    del args["x_t"]
    with pytest.raises(ValueError, match=match):
        bnnp_jax.posterior_samples(**args)


def test_non_finite_params_are_rejected(params):
    raw = params.likelihood["raw_sigma"]
    broken = params.replace(likelihood={"raw_sigma": raw.at[0].set(jnp.nan)})
    with pytest.raises(ValueError, match=r"^params: non-finite values in .*raw_sigma"):
        bnnp_jax.predict(**_predict_args(broken))


def test_prior_samples_validates(params):
    with pytest.raises(ValueError, match="^num_samples: must be a positive integer"):
        bnnp_jax.prior_samples(KEY, params, 0)
    with pytest.raises(ValueError, match="^key:"):
        bnnp_jax.prior_samples(7, params, 2)


def test_traced_calls_skip_the_checks(params):
    """Under ``jit`` the public function is the kernel: no host checks, same result."""
    traced = jax.jit(lambda x: bnnp_jax.predict(KEY, params, x, Y, XT, S).mean)(X)
    np.testing.assert_allclose(traced, bnnp_jax.predict(KEY, params, X, Y, XT, S).mean, rtol=1e-5, atol=1e-6)


# ----- valid edge cases -------------------------------------------------------


def test_empty_context_gives_the_prior(params):
    """``KL(q || p) = 0`` exactly in real arithmetic, so the weights (and with
    them the predictive) are the prior's."""
    post = bnnp_jax.posterior_samples(KEY, params, EMPTY, EMPTY, S)
    # sum over the 5 units' KL terms, each a float32 rounding of zero
    assert abs(float(post.kl)) < 1e-4
    assert [w.shape for w in post.weights] == [(S, 2, 4), (S, 5, 1)]
    assert all(np.all(np.isfinite(w)) for w in post.weights)


def test_single_point_context(params):
    post = bnnp_jax.posterior_samples(KEY, params, X[:1], Y[:1], S)
    assert np.isfinite(float(post.kl)) and float(post.kl) > 1e-3  # one point moves the posterior off the prior
    assert all(np.all(np.isfinite(w)) for w in post.weights)


def test_lists_and_float64_are_accepted_and_cast(params):
    ref = bnnp_jax.predict(KEY, params, X, Y, XT, S)
    from_lists = bnnp_jax.predict(KEY, params, X.tolist(), Y.tolist(), XT.tolist(), S)
    from_f64 = bnnp_jax.predict(KEY, params, X.astype(np.float64), Y.astype(np.float64), XT.astype(np.float64), S)
    for pred in (from_lists, from_f64):
        assert pred.samples.dtype == jnp.float32
        np.testing.assert_array_equal(pred.samples, ref.samples)


def test_oversize_batch_warns_and_means_one_batch(params):
    ref = bnnp_jax.predict(KEY, params, X, Y, XT, S)
    with pytest.warns(UserWarning, match=r"^batch_size: 10 exceeds the number of points \(5\); using a single batch"):
        big = bnnp_jax.predict(KEY, params, X, Y, XT, S, batch_size=10)
    np.testing.assert_array_equal(big.samples, ref.samples)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exactly N is not oversize
        bnnp_jax.predict(KEY, params, X, Y, XT, S, batch_size=5)


def test_kernel_carries_no_checks(params):
    """The jitted kernel neither raises on nor repairs what the public function refuses:
    NaN data propagate to NaN predictions (same call signature as the public function's,
    so this reuses its compilation)."""
    with pytest.raises(ValueError):
        bnnp_jax.predict(KEY, params, X, _set(Y, (0, 0), np.nan), XT, S)
    out = bnnp._predict_jit(KEY, params, X, _set(Y, (0, 0), np.nan), XT, S, None)
    assert np.isnan(np.asarray(out.samples)).any()


def test_same_key_same_result_different_key_different(params):
    a = bnnp_jax.predict(KEY, params, X, Y, XT, S)
    b = bnnp_jax.predict(KEY, params, X, Y, XT, S)
    c = bnnp_jax.predict(jax.random.PRNGKey(1), params, X, Y, XT, S)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.allclose(a.samples, c.samples)


# ----- files (the CLI's --context/--targets) ------------------------------------


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_csv_reader_valid_cases(tmp_path):
    x, y = validation.load_xy_file(_write(tmp_path, "a.csv", "x0,y0\n0.5,1\n-1,2e3\n"), need_y=True)
    np.testing.assert_array_equal(x, [[0.5], [-1.0]])
    np.testing.assert_array_equal(y, [[1.0], [2000.0]])
    x, y = validation.load_xy_file(_write(tmp_path, "empty.csv", "x0,y0\n"), need_y=True)
    assert x.shape == (0, 1) and y.shape == (0, 1)
    x, y = validation.load_xy_file(_write(tmp_path, "t.csv", "x0,x1\n1,2\n"), need_y=False)
    assert x.shape == (1, 2) and y is None


BAD_CSV = [
    ("not_a_number", "x0,y0\n1,abc\n", r"^--context: .*line 2, column 'y0': 'abc' is not a number"),
    ("missing_cell", "x0,y0\n1,\n", r"^--context: .*line 2, column 'y0': '' is not a number"),
    ("ragged_row", "x0,y0\n1,2\n3\n", r"^--context: .*line 3 has 1 fields, the header has 2"),
    ("bad_header", "a,b\n1,2\n", r"^--context: .*needs a header of columns named x\.\.\. then y\.\.\."),
    ("empty_file", "", r"^--context: .* is empty"),
    ("nan_cell", "x0,y0\n1,2\nnan,3\n", r"^--context: 'x' in .* 1 missing or non-finite value.*row 1, column 0"),
    ("no_y", "x0\n1\n", r"^--context: .* has no y"),
]


@pytest.mark.parametrize("case,text,match", BAD_CSV, ids=[c[0] for c in BAD_CSV])
def test_csv_reader_rejects(tmp_path, case, text, match):
    with pytest.raises(ValueError, match=match):
        validation.load_xy_file(_write(tmp_path, "c.csv", text), need_y=True, what="--context")


def test_npz_reader(tmp_path):
    p = tmp_path / "ok.npz"
    np.savez(p, x=np.arange(3), y=np.array([1, 2, 3], np.int32))  # integer files are cast
    x, y = validation.load_xy_file(str(p), need_y=True)
    assert x.dtype == np.float64 and x.shape == (3, 1) and y.shape == (3, 1)
    cases = [
        ({"y": np.ones(3)}, r"has no array 'x'"),
        ({"x": np.ones((2, 2, 2))}, r"'x' .* must be \[N\] or \[N, D\], got shape \(2, 2, 2\)"),
        ({"x": np.array([1.0, None])}, r"cannot read .* as npz"),  # object arrays need pickle: refused
        ({"x": np.ones(3), "y": np.ones(2)}, r"has 3 x rows but 2 y rows"),
        ({"x": np.array([1.0, np.inf])}, r"'x' .* 1 missing or non-finite"),
        ({"x": np.array(["a", "b"])}, r"array 'x' .* string dtype"),
    ]
    for arrays, match in cases:
        np.savez(p, **arrays)
        with pytest.raises(ValueError, match="^--targets: .*" + match):
            validation.load_xy_file(str(p), need_y=False, what="--targets")
    p.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match=r"^--targets: cannot read"):
        validation.load_xy_file(str(p), need_y=False, what="--targets")


def test_file_reader_missing_and_unsupported(tmp_path):
    with pytest.raises(ValueError, match=r"^--context: file not found"):
        validation.load_xy_file(str(tmp_path / "nope.csv"), True, "--context")
    with pytest.raises(ValueError, match=r"^--context: unsupported file type '.txt'"):
        validation.load_xy_file(_write(tmp_path, "a.txt", "1"), True, "--context")


# ----- data loaders --------------------------------------------------------------

LOADER_ERRORS = [
    ("unknown_family", lambda: registry.make_sampler("nope"), r"unknown task family 'nope'; valid families"),
    ("unknown_param", lambda: registry.make_sampler("sawtooth", foo=1), r"unknown parameter\(s\) \['foo'\].*valid"),
    ("n_range_reversed", lambda: registry.make_sampler("sawtooth", n_range=(10, 5)), r"n_range must satisfy"),
    ("n_range_zero", lambda: registry.make_sampler("sawtooth", n_range=(0, 5)), r"n_range must satisfy"),
    ("negative_noise", lambda: registry.make_sampler("sawtooth", noise=-1.0), r"noise must be >= 0"),
    ("nan_noise", lambda: registry.make_sampler("sawtooth", noise=float("nan")), r"noise must be >= 0, got nan"),
    ("zero_lengthscale", lambda: registry.make_sampler("gp", lengthscale=0.0), r"lengthscale must be > 0"),
    ("bad_proportion", lambda: registry.make_batch_sampler("sawtooth", (0.6, 0.2)), r"context_proportion must"),
    ("mnist_missing", lambda: images.load_mnist("/nonexistent/mnist.gz"), r"does not exist"),
    ("era5_missing", lambda: precipitation.load_era5("/nonexistent/era5.nc"), r"does not exist"),
]


@pytest.mark.parametrize("case,fn,match", LOADER_ERRORS, ids=[c[0] for c in LOADER_ERRORS])
def test_data_loaders_reject(case, fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def test_mnist_reader_rejects_bad_files(tmp_path):
    p = tmp_path / "bad.idx"
    p.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3 + b"\x00" * 5)
    with pytest.raises(ValueError, match=r"IDX header promises shape \(10, 10, 10\) but holds 5 values"):
        images.load_mnist(str(p))
    p.write_bytes(b"garbage!")
    with pytest.raises(ValueError, match="not an IDX file"):
        images.load_mnist(str(p))


def test_mnist_reader_rejects_nan_pixels(tmp_path):
    a = np.random.default_rng(0).random((3, 4, 4))
    a[0, 0, 0] = np.nan
    np.savez(tmp_path / "m.npz", images=a)
    with pytest.raises(ValueError, match="NaN|non-finite"):
        images.load_mnist(str(tmp_path / "m.npz"))
