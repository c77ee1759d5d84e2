"""Task generators, image and precipitation data, ERA5/MNIST loaders, registry.

Statistical checks use tolerances of 4 standard errors computed from the
samples themselves (or from the binomial law), with fixed seeds.
"""

import gzip
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnnp_jax.data import images, precipitation, registry, synthetic
from bnnp_jax.data.tasks import TaskBatch

KEY = jax.random.PRNGKey(0)
T = 200  # tasks per cached batch: shared by the shape and statistics tests (one compile per family)
SMALL = {  # (n_max, n_range) small enough for fast tests
    "sawtooth": (30, (10, 31)), "heaviside": (30, (10, 31)), "bnn_prior": (30, (10, 31)), "gp": (30, (10, 31)),
    "cubic": (20, (20, 21)), "ecg": (50, (10, 51)), "digits": (40, (10, 41)), "precipitation": (50, (10, 51)),
}


def _sampler(name, **params):
    n_max, n_range = SMALL[name]
    return registry.make_sampler(name, n_max=n_max, n_range=n_range, **params)


@pytest.fixture(scope="module")
def batches():
    """``name -> (x, y, mask)`` as float64 NumPy, T tasks per family at the SMALL sizes."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = tuple(np.asarray(a, np.float64) for a in _sampler(name)(KEY, T))
        return cache[name]

    return get


def _check_padding(x, y, mask, n_range):
    mask = np.asarray(mask)
    sizes = mask.sum(1)
    assert np.all((sizes >= n_range[0]) & (sizes < n_range[1]))
    # Real points come first: the mask is a prefix of ones.
    np.testing.assert_array_equal(mask, (np.arange(mask.shape[1])[None] < sizes[:, None]).astype(mask.dtype))
    assert np.all(np.asarray(x)[mask == 0] == 0) and np.all(np.asarray(y)[mask == 0] == 0)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))


@pytest.mark.parametrize("name", list(SMALL))
def test_shapes_masks_determinism(name, batches):
    info = registry.family_info(name)
    sampler = _sampler(name)
    x, y, mask = sampler(KEY, T)
    n_max, n_range = SMALL[name]
    chex.assert_shape([x, y, mask], [(T, n_max, info["x_dim"]), (T, n_max, info["y_dim"]), (T, n_max)])
    assert x.dtype == y.dtype == mask.dtype == jnp.float32
    _check_padding(x, y, mask, n_range)
    if n_range[1] - n_range[0] > 1:
        assert len(np.unique(mask.sum(1))) > 1  # sizes vary
    np.testing.assert_array_equal(y, batches(name)[1])  # same key, same tasks
    x3, y3, _ = sampler(jax.random.PRNGKey(1), T)
    assert not np.allclose(y, y3)


@pytest.mark.parametrize("name", ["sawtooth"])
def test_jit_matches_eager(name, batches):
    """Op-by-op execution against the compiled sampler (eager is slow: one family only)."""
    with jax.disable_jit():
        xe, ye, me = _sampler(name)(KEY, T)
    x, y, mask = batches(name)
    np.testing.assert_array_equal(mask, me)
    np.testing.assert_allclose(xe, x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ye, y, rtol=1e-5, atol=1e-5)
    x_outer = jax.jit(_sampler(name), static_argnums=1)(KEY, T)[0]  # nests inside an outer jit
    np.testing.assert_allclose(x_outer, x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["gp", "ecg", "digits"])  # uniform-input, grid-subset and pool paths
def test_float64_preserved(x64, name):
    params = {"dtype": jnp.float64} if name == "digits" else {}
    x, y, mask = _sampler(name, **params)(KEY, 3)
    assert x.dtype == y.dtype == mask.dtype == jnp.float64
    _check_padding(x, y, mask, SMALL[name][1])


def _per_task_lstsq(x, y, mask):
    """Slope, intercept and residuals of a line fitted to each task's real points (float64 NumPy)."""
    out = []
    for xt, yt, mt in zip(x, y, mask):
        xr, yr = xt[mt > 0, 0], yt[mt > 0, 0]
        design = np.stack([xr, np.ones_like(xr)], 1)
        coef = np.linalg.lstsq(design, yr, rcond=None)[0]
        out.append((coef[0], coef[1], yr - design @ coef))
    return out


def test_sawtooth_slope_offset_and_noise(batches):
    x, y, mask = batches("sawtooth")
    assert np.all((x[mask > 0] >= -2) & (x[mask > 0] < 2))
    fits = _per_task_lstsq(x, y - 1.33 * (np.mod(x, 0.75) - 0.375), mask)
    # Once the teeth are removed, each task is a line e1 x / 3 + 0.25 e2 plus N(0, 0.05^2) noise.
    resid = np.concatenate([r for _, _, r in fits])
    dof = len(resid) - 2 * T
    assert abs(np.sum(resid**2) / dof / 0.05**2 - 1) < 4 * np.sqrt(2 / dof)
    e1 = np.array([3 * s for s, _, _ in fits])
    e2 = np.array([c / 0.25 for _, c, _ in fits])
    for e in (e1, e2):  # N(0, 1) per task (slope noise adds < 1% variance)
        assert abs(e.mean()) < 4 / np.sqrt(T)
        assert abs(e.var() - 1) < 4 * np.sqrt(2 / T)


def test_heaviside_values_and_symmetry(batches):
    x, y, mask = batches("heaviside")
    real = y[mask > 0]
    assert np.all(np.abs(x[mask > 0]) <= 5)
    resid = np.abs(real) - 1  # +-1 plus N(0, 0.01^2)
    assert abs(np.mean(resid**2) / 0.01**2 - 1) < 4 * np.sqrt(2 / resid.size)
    frac = np.mean(y[:, 0, 0] > 0)  # one point per task: independent, p = 1/2 by symmetry
    assert abs(frac - 0.5) < 4 * np.sqrt(0.25 / T)
    hv = np.asarray(registry.true_function_samples(KEY, "heaviside", jnp.linspace(-5, 5, 41)[:, None], 8))
    assert hv.shape == (8, 41, 1) and set(np.unique(hv)) == {-1.0, 1.0}


def test_gp_covariance_matches_kernel(x64, batches):
    grid = jnp.array([[0.0], [0.3], [1.0]])
    f = np.asarray(registry.true_function_samples(KEY, "gp", grid, 4000))[..., 0]
    k = np.exp(-0.5 * (np.asarray(grid) - np.asarray(grid).T) ** 2 / 0.5**2)
    emp = f.T @ f / len(f)
    se = np.sqrt((1 + k**2) / len(f))  # sd of a Gaussian product-moment estimate
    assert np.all(np.abs(emp - k) < 4 * se)
    first = batches("gp")[1][:, 0, 0]  # marginal variance 1 + noise^2
    assert abs(first.var() - 1.0025) < 4 * 1.0025 * np.sqrt(2 / T)


def test_bnn_prior_variance_follows_network_convention():
    """One hidden ReLU layer of width 64: a_1 = [x, 1] W_1 (no input activation),
    f = [relu(a_1), 1] W_2, so Var f(x) = (64 (x^2 + 1) / 4 + 1) / 65 exactly;
    with no hidden layer Var f(x) = (x^2 + 1) / 2. At x = -2 an activation on the
    input would give a different variance."""
    grid = jnp.array([[-2.0], [2.0]])
    for hidden, var in (((64,), (64 * 5 / 4 + 1) / 65), ((), 5 / 2)):
        f = np.asarray(registry.true_function_samples(KEY, "bnn_prior", grid, 6000, hidden=hidden), np.float64)
        for g in range(2):
            fg = f[:, g, 0]
            assert abs(np.mean(fg**2) - var) < 4 * np.std(fg**2) / np.sqrt(fg.size)
            assert abs(np.mean(fg)) < 4 * np.std(fg) / np.sqrt(fg.size)


def test_cubic_residuals_and_scale_flag(batches):
    x, y, mask = batches("cubic")
    assert np.all(mask == 1) and np.all(np.abs(x) <= 4)
    resid = y - x**3
    assert abs(resid.var() / 9 - 1) < 4 * np.sqrt(2 / resid.size)
    xs, ys, _ = _sampler("cubic", scale=True)(KEY, T)
    np.testing.assert_allclose(ys, y / 30, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(xs, x)


def test_ecg_grid_subset_and_beat_shape(batches):
    x, y, mask = batches("ecg")
    on_grid = (x[..., 0] + 3) * 100
    np.testing.assert_allclose(on_grid, np.round(on_grid), atol=1e-3)  # points of the 600-point grid
    assert np.all((x >= -3) & (x < 3))
    for xt, mt in zip(x[..., 0], mask):
        assert len(np.unique(xt[mt > 0])) == mt.sum()  # distinct grid points
    grid = synthetic.ecg_grid()
    assert grid.shape == (600, 1) and float(grid[0, 0]) == -3.0 and abs(float(grid[-1, 0]) - 2.99) < 1e-6
    f = np.asarray(registry.true_function_samples(KEY, "ecg", grid, 50))[..., 0]
    peak = f.max(1)
    assert np.all((peak > 0.4) & (peak < 2.0))  # an R wave
    assert np.all(np.abs(np.median(f, 1)) < 0.25)  # flat baseline over most of the window
    r_time = np.asarray(grid)[f.argmax(1), 0]
    assert np.all((r_time > -2.1) & (r_time < 2.1)) and r_time.std() > 0.5


def test_sample_images_maps_pixels_exactly():
    """Image i has pixel (r, c) = 100 i + 8 r + c, so each (x, y) pair reveals its source."""
    num, h, w = 3, 6, 8
    imgs = 100.0 * np.arange(num)[:, None, None] + (w * np.arange(h)[:, None] + np.arange(w)[None])[None]
    x, y, mask = images.sample_images(KEY, jnp.asarray(imgs, jnp.float32), 12, 40, (5, 41))
    x, y, mask = np.asarray(x), np.asarray(y)[..., 0], np.asarray(mask)
    _check_padding(x, y[..., None], mask, (5, 41))
    col = np.rint((x[..., 0] + 1) / 2 * (w - 1))
    row = np.rint((x[..., 1] + 1) / 2 * (h - 1))
    for t in range(12):
        real = mask[t] > 0
        src = np.floor(y[t, real] / 100)
        assert len(np.unique(src)) == 1  # one image per task
        np.testing.assert_array_equal(y[t, real] - 100 * src, w * row[t, real] + col[t, real])
        assert len(np.unique(row[t, real] * w + col[t, real])) == real.sum()


def test_grids_and_splits():
    grid = np.asarray(images.pixel_grid(8, 8))
    assert grid.shape == (64, 2) and grid.min() == -1 and grid.max() == 1
    xg, yg = images.image_task(jnp.arange(12.0).reshape(3, 4))
    np.testing.assert_allclose(xg[5], [np.linspace(-1, 1, 4)[1], 0.0], atol=1e-7)  # row 1, col 1
    assert float(yg[5, 0]) == 5.0
    fine = np.asarray(images.fine_grid(8, 8, 2))
    assert fine.shape == (256, 2) and fine.min() == -1 and fine.max() == 1
    tr, te = images.split_indices(100, 0.2, seed=3)
    assert len(te) == 20 and len(np.intersect1d(tr, te)) == 0 and len(np.union1d(tr, te)) == 100
    np.testing.assert_array_equal(te, images.split_indices(100, 0.2, seed=3)[1])
    assert not np.array_equal(te, images.split_indices(100, 0.2, seed=4)[1])
    train, labels = images.digits_split("train")
    assert train.shape[1:] == (8, 8) and 0 <= train.min() and train.max() <= 1 and len(labels) == len(train)
    with pytest.raises(ValueError, match="test_fraction"):
        images.split_indices(10, 1.5)


def test_load_mnist_formats(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    raw = struct.pack(">BBBB3I", 0, 0, 0x08, 3, 5, 4, 3) + imgs.tobytes()
    (tmp_path / "imgs-idx3-ubyte").write_bytes(raw)
    (tmp_path / "imgs-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    np.savez(tmp_path / "m.npz", x_train=imgs, x_test=imgs[:2])
    np.savez(tmp_path / "i.npz", images=imgs / 255.0)
    for name in ("imgs-idx3-ubyte", "imgs-idx3-ubyte.gz", "m.npz", "i.npz"):
        np.testing.assert_allclose(images.load_mnist(str(tmp_path / name)), imgs / 255.0, rtol=1e-6)
    assert images.load_mnist(str(tmp_path / "m.npz"), split="test").shape == (2, 4, 3)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rubbish")
    with pytest.raises(ValueError, match="IDX"):
        images.load_mnist(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="does not exist"):
        images.load_mnist(str(tmp_path / "missing"))


def test_precipitation_positive_correlated_and_day_varying(batches):
    x, y, mask = batches("precipitation")
    y = y[..., 0]
    assert np.all(y[mask > 0] > 0) and np.all(np.abs(x[..., :2][mask > 0]) <= 1)
    corr = [np.corrcoef(x[t, mask[t] > 0, 2], np.log(y[t, mask[t] > 0]))[0, 1] for t in range(T)]
    assert np.mean(corr) > 4 * np.std(corr) / np.sqrt(T)  # positive on average
    means = np.array([y[t, mask[t] > 0].mean() for t in range(T)])
    assert means.std() > 0.2 * means.mean()  # day-level variation


def _write_era5_nc3(path, tp, t2m, lon, lat):
    """A tiny ERA5-like NetCDF3: tp packed as int16 with a fill value, t2m stored (time, lon, lat)."""
    from scipy.io import netcdf_file

    scale, offset, fill = 1e-5, 0.0, -32767
    with netcdf_file(str(path), "w") as f:
        f.createDimension("time", tp.shape[0])
        f.createDimension("latitude", len(lat))
        f.createDimension("longitude", len(lon))
        for name, vals in (("time", np.arange(tp.shape[0]) * 24.0), ("latitude", lat), ("longitude", lon)):
            v = f.createVariable(name, "f8", (name,))
            v[:] = vals
        v = f.createVariable("tp", "i2", ("time", "latitude", "longitude"))
        packed = np.round((tp - offset) / scale)
        v[:] = np.where(np.isnan(tp), fill, packed).astype(np.int16)
        v.scale_factor, v.add_offset, v._FillValue = scale, offset, np.int16(fill)
        v = f.createVariable("t2m", "f4", ("time", "longitude", "latitude"))
        v[:] = np.transpose(t2m, (0, 2, 1)).astype(np.float32)


def _era5_arrays():
    rng = np.random.default_rng(1)
    lon, lat = np.array([10.0, 10.25, 10.5, 10.75, 11.0]), np.array([50.0, 49.75, 49.5, 49.25])
    tp = np.round(rng.uniform(0, 0.01, size=(3, 4, 5)) / 1e-5) * 1e-5
    tp[1, 2, 3] = np.nan
    t2m = rng.normal(280, 5, size=(3, 4, 5))
    return tp, t2m, lon, lat


def _check_era5(data, tp, t2m, lon, lat):
    valid = np.isfinite(tp).reshape(3, -1)
    np.testing.assert_array_equal(data.valid, valid)
    np.testing.assert_allclose(data.y[..., 0][valid], 1000 * tp.reshape(3, -1)[valid], atol=1e-4)
    t = t2m.astype(np.float32).astype(np.float64)
    tv = t[np.isfinite(tp)]
    np.testing.assert_allclose(data.x[..., 2][valid], ((t.reshape(3, -1) - tv.mean()) / tv.std())[valid], atol=1e-5)
    # Point (lat index 2, lon index 3) sits at row 2 * 5 + 3 of a task.
    np.testing.assert_allclose(data.x[0, 13, :2], [2 * (lon[3] - 10) / 1 - 1, 2 * (lat[2] - 49.25) / 0.75 - 1],
                               atol=1e-6)
    assert np.all(data.x[~valid] == 0) and np.all(data.y[~valid] == 0)


def test_load_era5_netcdf3_both_engines(tmp_path):
    tp, t2m, lon, lat = _era5_arrays()
    path = tmp_path / "era5.nc"
    _write_era5_nc3(path, tp, t2m, lon, lat)
    engines = ["scipy"]
    try:
        import netCDF4  # noqa: F401

        engines.append("netcdf4")
    except ImportError:
        pass
    for engine in engines:
        data = precipitation.load_era5(str(path), engine=engine)
        _check_era5(data, tp, t2m, lon, lat)
    x, y, mask = registry.make_sampler("era5", n_max=20, n_range=(20, 21), data=data)(KEY, 30)
    # Time step 1 has one missing point, so its tasks hold 19 points, the others 20.
    sizes = np.asarray(mask).sum(1)
    assert set(sizes) == {19.0, 20.0}
    assert np.all(np.asarray(y)[np.asarray(mask) > 0] > 0)
    with pytest.raises(ValueError, match="not in file"):
        precipitation.load_era5(str(path), precip_var="pr")


def test_load_era5_index_coordinates_and_singleton_dims(tmp_path):
    """No coordinate variables (index coordinates), an extra size-1 dim, lat/lon given as 'lat'/'lon'."""
    from scipy.io import netcdf_file

    rng = np.random.default_rng(2)
    tp, t2m = rng.uniform(0, 0.01, size=(2, 1, 3, 4)), rng.normal(280, 5, size=(2, 3, 4))
    path = tmp_path / "bare.nc"
    with netcdf_file(str(path), "w") as f:
        for name, size in (("time", 2), ("number", 1), ("lat", 3), ("lon", 4), ("member", 2)):
            f.createDimension(name, size)
        f.createVariable("tp", "f8", ("time", "number", "lat", "lon"))[:] = tp
        f.createVariable("t2m", "f8", ("time", "lat", "lon"))[:] = t2m
        f.createVariable("t2m_ens", "f8", ("time", "member", "lat", "lon"))[:] = np.stack([t2m, t2m], 1)
    data = precipitation.load_era5(str(path), engine="scipy")
    np.testing.assert_allclose(data.y[..., 0], 1000 * tp.reshape(2, -1), rtol=1e-6)
    np.testing.assert_allclose(data.x[0, :4, 0], [-1, -1 / 3, 1 / 3, 1], atol=1e-6)  # lon index 0..3 scaled
    assert data.stats["lon_range"] == (0.0, 3.0) and list(data.times) == [0.0, 1.0]
    with pytest.raises(ValueError, match="extra dimension 'member'"):
        precipitation.load_era5(str(path), engine="scipy", temp_var="t2m_ens")


def test_load_era5_netcdf4_file(tmp_path):
    netCDF4 = pytest.importorskip("netCDF4")
    tp, t2m, lon, lat = _era5_arrays()
    path = tmp_path / "era5_v4.nc"
    with netCDF4.Dataset(str(path), "w", format="NETCDF4") as f:
        for name, vals in (("valid_time", np.arange(3.0)), ("latitude", lat), ("longitude", lon)):
            f.createDimension(name, len(vals))
            f.createVariable(name, "f8", (name,))[:] = vals
        v = f.createVariable("tp", "f4", ("valid_time", "latitude", "longitude"), fill_value=np.float32(-9999))
        v[:] = np.ma.masked_invalid(tp)
        f.createVariable("t2m", "f4", ("valid_time", "longitude", "latitude"))[:] = np.transpose(t2m, (0, 2, 1))
    _check_era5(precipitation.load_era5(str(path)), tp.astype(np.float32).astype(np.float64), t2m, lon, lat)
    with pytest.raises(ValueError, match="not a NetCDF3 file"):
        precipitation.load_era5(str(path), engine="scipy")


def test_pool_sampling_skips_invalid_points():
    y_pool = jnp.arange(2 * 10, dtype=jnp.float32).reshape(2, 10, 1)
    valid = jnp.array([[1.0] * 4 + [0.0] * 6, [1.0] * 10])
    x, y, mask = synthetic.sample_from_pool(KEY, jnp.zeros((10, 1)), y_pool, valid, 40, 8, (6, 9))
    y, mask = np.asarray(y)[..., 0], np.asarray(mask)
    first = y[:, 0] < 10
    assert first.any() and (~first).any()
    assert np.all(mask[first].sum(1) <= 4) and np.all(y[first][mask[first] > 0] < 4)


def test_registry_errors_and_batches():
    with pytest.raises(ValueError, match="valid families.*sawtooth"):
        registry.make_sampler("sawtooht")
    with pytest.raises(ValueError, match="valid:.*lengthscale"):
        registry.make_sampler("gp", lengthscal=1.0)
    with pytest.raises(ValueError, match="noise"):
        registry.make_sampler("sawtooth", noise=-1.0)
    with pytest.raises(ValueError, match="n_range"):
        registry.make_sampler("sawtooth", n_max=10, n_range=(5, 30))
    with pytest.raises(ValueError, match="activation"):
        registry.make_sampler("bnn_prior", activation="swish9")
    with pytest.raises(ValueError, match="path"):
        registry.make_sampler("era5")
    info = registry.family_info("sawtooth")
    assert info["n_range"] == (40, 100) and info["context_proportion"] == (0.1, 0.5) and info["x_range"] == (-2, 2)
    assert registry.family_info("heaviside")["beta"] == 0.1
    batch = jax.jit(registry.make_batch_sampler("sawtooth", n_max=30, n_range=(10, 31)), static_argnums=1)(KEY, 5)
    assert isinstance(batch, TaskBatch) and batch.x.shape == (5, 30, 1)
    ctx, tgt, m = np.asarray(batch.context), np.asarray(batch.target), np.asarray(batch.mask)
    np.testing.assert_array_equal(ctx + tgt, m)
    assert np.all(ctx.sum(1) >= 1) and np.all(tgt.sum(1) >= 1)


def test_true_function_samples_noise_free():
    grid = jnp.linspace(-4, 4, 41)[:, None]
    cubic = registry.true_function_samples(KEY, "cubic", grid, 2, scale=True)
    np.testing.assert_allclose(cubic[1], grid**3 / 30, rtol=1e-6)
    saw = np.asarray(registry.true_function_samples(KEY, "sawtooth", grid, 3), np.float64)
    lin = saw - 1.33 * (np.mod(np.asarray(grid, np.float64), 0.75) - 0.375)
    assert np.abs(np.diff(lin, 2, axis=1)).max() < 1e-5
    with pytest.raises(ValueError, match="valid families"):
        registry.true_function_samples(KEY, "digits", grid, 2)
    with pytest.raises(ValueError, match="noise"):
        registry.true_function_samples(KEY, "gp", grid, 2, noise=0.1)
