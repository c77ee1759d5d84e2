"""Precipitation tasks: inputs (lon, lat, t2m), target precipitation (SPEC section 11).

ERA5 cannot be downloaded here, so this module ships

- a synthetic generator with the same structure: one task = one "day" on a
  lon/lat grid with a random point subset; and
- :func:`load_era5` for a user-supplied ERA5 NetCDF file (one task per time step).

Synthetic model (all in normalised units, lon and lat in ``[-1, 1]``). A fixed
"world" (``world_seed``) has an orography field ``h``. Each day draws a season
phase ``phi ~ U(0, 2 pi)``, a temperature anomaly field ``A``, a wetness
``w ~ N(-0.5, 0.7^2)``, a temperature coefficient ``b ~ N(0.6, 0.2^2)`` and a
weather field ``G`` (``lengthscale``); then

    t2m    = sin(phi) - 0.8 lat - 0.5 h + 0.5 A
    precip = softplus(w + b t2m + G + noise * eps)   > 0 everywhere

so precipitation rises with temperature within a day (``b > 0`` with probability
0.999) and the orography acts through the temperature. Fields are SE-kernel
random Fourier features (unit variance), so a day costs ``O(P F)`` and needs
no Cholesky.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.data.synthetic import (check_nonnegative, check_positive, check_sizes, float_dtype, jit_sampler,
                                     subset_points)

__all__ = ["NUM_FEATURES", "lonlat_grid", "random_field", "precipitation_day", "sample_precipitation",
           "Era5Data", "load_era5"]

Array = jax.Array
NUM_FEATURES = 128


def lonlat_grid(grid=(16, 16), dtype=None) -> Array:
    """Grid points ``[G_lat * G_lon, 2]`` (lon, lat) in ``[-1, 1]^2``, latitude-major."""
    n_lat, n_lon = int(grid[0]), int(grid[1])
    if n_lat < 2 or n_lon < 2:
        raise ValueError(f"grid must be (n_lat, n_lon) with both >= 2, got {grid}")
    dtype = float_dtype(dtype)
    lat, lon = jnp.meshgrid(jnp.linspace(-1, 1, n_lat, dtype=dtype), jnp.linspace(-1, 1, n_lon, dtype=dtype),
                            indexing="ij")
    return jnp.stack([lon.reshape(-1), lat.reshape(-1)], axis=-1)


def random_field(z: Array, s: Array, lengthscale: float) -> Array:
    """A unit-variance SE random field at ``s [P, 2]`` by random Fourier features -> ``[P]``.

    ``z [4, F]`` are standard normals: frequencies ``z[:2] / lengthscale``,
    phases ``2 pi Phi(z[2])`` (uniform), amplitudes ``z[3]``. Passing the
    normals in lets a whole day come from one random call (each call costs
    XLA compile time on CPU).
    """
    omega = z[:2] / lengthscale
    phase = 2 * math.pi * jax.scipy.special.ndtr(z[2])
    return math.sqrt(2.0 / z.shape[1]) * jnp.cos(s @ omega + phase) @ z[3]


def _world_normals(world_seed: int, dtype) -> Array:
    # The fixed world is a NumPy constant, not a traced draw from a constant key.
    return jnp.asarray(np.random.default_rng(int(world_seed)).standard_normal((4, NUM_FEATURES)), dtype)


def precipitation_day(key, s: Array, lengthscale=0.3, noise=0.1, world_seed=0) -> tuple[Array, Array]:
    """One synthetic day at ``s [P, 2]`` -> ``(x [P, 3] = (lon, lat, t2m), y [P, 1] precipitation)``."""
    check_positive("lengthscale", lengthscale)
    noise = check_nonnegative("noise", noise)
    dt, num_f, num_p = s.dtype, NUM_FEATURES, s.shape[0]
    h = random_field(_world_normals(world_seed, dt), s, 0.5)
    z = jax.random.normal(key, (8 * num_f + 3 + num_p,), dt)
    anomaly = random_field(z[: 4 * num_f].reshape(4, num_f), s, 0.6)
    weather = random_field(z[4 * num_f : 8 * num_f].reshape(4, num_f), s, lengthscale)
    phi, wet, coef = 2 * math.pi * jax.scipy.special.ndtr(z[-num_p - 3]), z[-num_p - 2], z[-num_p - 1]
    t2m = jnp.sin(phi) - 0.8 * s[:, 1] - 0.5 * h + 0.5 * anomaly
    latent = (-0.5 + 0.7 * wet) + (0.6 + 0.2 * coef) * t2m + weather
    y = jax.nn.softplus(latent + noise * z[-num_p:])
    return jnp.concatenate([s, t2m[:, None]], axis=-1), y[:, None]


@jit_sampler
def sample_precipitation(key, num_tasks, n_max=200, n_range=(100, 201), grid=(16, 16), lengthscale=0.3, noise=0.1,
                         world_seed=0, dtype=None):
    """Synthetic precipitation tasks: ``(x [T, n_max, 3], y [T, n_max, 1], mask [T, n_max])``.

    Task ``t`` is one day on the ``grid`` (see the module docstring) and keeps a
    uniformly random subset of ``n ~ U{n_range}`` grid points.
    """
    check_sizes(num_tasks, n_max, n_range)
    s = lonlat_grid(grid, dtype)
    if n_max > s.shape[0]:
        raise ValueError(f"n_max={n_max} exceeds the {s.shape[0]} points of grid {grid}")
    k_day, k_sub = jax.random.split(key)
    day = lambda k: precipitation_day(k, s, lengthscale, noise, world_seed)  # noqa: E731
    x, y = jax.vmap(day)(jax.random.split(k_day, num_tasks))
    return subset_points(k_sub, x, y, None, n_max, n_range)


# ----------------------------------------------------------------------------- ERA5
class Era5Data(NamedTuple):
    """ERA5 tasks, one per time step (NumPy arrays).

    Attributes:
      x: ``[T, P, 3]`` (lon, lat, t2m): lon/lat min-max scaled to ``[-1, 1]``,
        t2m standardised over the valid points (constants in ``stats``).
      y: ``[T, P, 1]`` precipitation in mm (``tp`` times ``precip_scale``, clipped at 0).
      valid: ``[T, P]`` 1.0 where both variables are present; invalid points are zeroed.
      times: ``[T]`` raw time coordinate values.
      stats: dict with ``lon_range``, ``lat_range``, ``t2m_mean``, ``t2m_std``.
    """

    x: np.ndarray
    y: np.ndarray
    valid: np.ndarray
    times: np.ndarray
    stats: dict


_COORDS = {"lon": ("longitude", "lon"), "lat": ("latitude", "lat"), "time": ("time", "valid_time")}


def _open(path: str, engine: str):
    if engine not in ("auto", "netcdf4", "scipy"):
        raise ValueError(f"engine must be 'auto', 'netcdf4' or 'scipy', got {engine!r}")
    if engine in ("auto", "netcdf4"):
        try:
            import netCDF4
        except ImportError:
            if engine == "netcdf4":
                raise ImportError("engine='netcdf4' needs the optional extra: pip install 'bnnp_jax[era5]'")
        else:
            ds = netCDF4.Dataset(path, "r")
            ds.set_auto_maskandscale(True)
            return ds
    from scipy.io import netcdf_file

    try:
        return netcdf_file(path, "r", mmap=False)
    except (TypeError, ValueError) as err:  # scipy rejects HDF5-based (NetCDF4) files
        raise ValueError(f"{path} is not a NetCDF3 file ({err}); install the 'era5' extra "
                         "(netCDF4) to read NetCDF4 files") from err


def _read(ds, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """A variable as float64 with missing values as NaN, unpacked, plus its dimension names."""
    if name not in ds.variables:
        raise ValueError(f"variable {name!r} not in file; found {sorted(ds.variables)}")
    var = ds.variables[name]
    data = var[:]
    if isinstance(data, np.ma.MaskedArray):  # netCDF4 already masked and unpacked
        return np.ma.filled(data.astype(np.float64), np.nan), tuple(var.dimensions)
    data = np.array(data, dtype=np.float64)
    for attr in ("_FillValue", "missing_value"):
        fill = getattr(var, attr, None)
        if fill is not None:
            data[data == float(np.asarray(fill).ravel()[0])] = np.nan
    data = data * float(getattr(var, "scale_factor", 1.0)) + float(getattr(var, "add_offset", 0.0))
    return data, tuple(var.dimensions)


def _to_time_lat_lon(data: np.ndarray, dims: tuple[str, ...], names: dict, var: str) -> np.ndarray:
    """Reorder to ``[time, lat, lon]``, dropping singleton extra dims (e.g. ``number``)."""
    extra = [d for d in dims if d not in names.values()]
    for d in extra:
        if data.shape[dims.index(d)] != 1:
            raise ValueError(f"variable {var!r} has an extra dimension {d!r} of size > 1 (dims {dims})")
    data = data.squeeze(tuple(dims.index(d) for d in extra))
    dims = tuple(d for d in dims if d not in extra)
    if set(dims) != set(names.values()):
        raise ValueError(f"variable {var!r} must have dims (time, lat, lon) as {names}, got {dims}")
    return np.transpose(data, [dims.index(names[k]) for k in ("time", "lat", "lon")])


def _scale(v: np.ndarray) -> np.ndarray:
    lo, hi = float(v.min()), float(v.max())
    return np.zeros_like(v) if hi == lo else 2.0 * (v - lo) / (hi - lo) - 1.0


def load_era5(path: str, precip_var: str = "tp", temp_var: str = "t2m", precip_scale: float = 1000.0,
              engine: str = "auto", dtype=None) -> Era5Data:
    """Tasks per time step from a user-supplied ERA5 NetCDF file.

    The file needs ``precip_var`` and ``temp_var`` over (time, latitude,
    longitude) in any order (coordinate names ``longitude``/``lon``,
    ``latitude``/``lat``, ``time``/``valid_time``). ``engine='auto'`` uses
    netCDF4 (the ``era5`` extra) when installed, else ``scipy.io.netcdf_file``
    (NetCDF3 only). ERA5 ``tp`` is in metres, hence ``precip_scale=1000`` for
    mm; packed files hold tiny negative values from quantisation, clipped to 0.
    Sample tasks with ``sample_from_pool(key, d.x, d.y, d.valid, ...)``.
    """
    if not os.path.exists(path):
        raise ValueError(f"path {path!r} does not exist")
    check_positive("precip_scale", precip_scale)
    ds = _open(path, engine)
    try:
        names = {}
        for k, options in _COORDS.items():
            found = [o for o in options if o in ds.dimensions]
            if not found:
                raise ValueError(f"no {k} dimension in {path}: expected one of {options}, found {list(ds.dimensions)}")
            names[k] = found[0]
        tp = _to_time_lat_lon(*_read(ds, precip_var), names, precip_var)
        t2m = _to_time_lat_lon(*_read(ds, temp_var), names, temp_var)
        # A dimension without a coordinate variable gets index coordinates.
        times, lat, lon = (_read(ds, names[k])[0] if names[k] in ds.variables else np.arange(size, dtype=float)
                           for k, size in zip(("time", "lat", "lon"), tp.shape))
    finally:
        ds.close()
    return _build_tasks(tp, t2m, lon, lat, times, precip_scale, float_dtype(dtype))


def _build_tasks(tp, t2m, lon, lat, times, precip_scale, dtype) -> Era5Data:
    if tp.shape != t2m.shape:
        raise ValueError(f"precipitation {tp.shape} and temperature {t2m.shape} grids differ")
    num_t, n_lat, n_lon = tp.shape
    valid = np.isfinite(tp) & np.isfinite(t2m)
    if not valid.any():
        raise ValueError("the file holds no point where both precipitation and temperature are present")
    mean, std = float(t2m[valid].mean()), float(t2m[valid].std())
    std = std if std > 0 else 1.0
    lat_g, lon_g = np.meshgrid(_scale(lat), _scale(lon), indexing="ij")
    s = np.broadcast_to(np.stack([lon_g.ravel(), lat_g.ravel()], -1), (num_t, n_lat * n_lon, 2))
    t_std = np.where(valid, (t2m - mean) / std, 0.0).reshape(num_t, -1, 1)
    y = np.where(valid, np.maximum(tp * precip_scale, 0.0), 0.0).reshape(num_t, -1, 1)
    stats = {"lon_range": (float(lon.min()), float(lon.max())), "lat_range": (float(lat.min()), float(lat.max())),
             "t2m_mean": mean, "t2m_std": std}
    x = np.where(valid.reshape(num_t, -1, 1), np.concatenate([s, t_std], axis=-1), 0.0)
    return Era5Data(x.astype(dtype), y.astype(dtype), valid.reshape(num_t, -1).astype(dtype), times, stats)
