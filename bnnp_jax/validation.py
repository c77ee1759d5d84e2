"""Input checks for the user-facing entry points (host side, outside ``jit``).

Every check raises ``ValueError`` whose message starts with the argument's
name and says what is wrong and, where there is one, how to fix it. The
jitted kernels never call these: the public functions (:func:`bnnp_jax.predict`
and friends, in :mod:`bnnp_jax.bnnp.model`) call them with concrete arguments
and skip them when traced, so code under a transformation pays nothing for them.

Policies (docs/robustness.md lists every case and its outcome):

- Integer, boolean, complex and string arrays are errors in the library API:
  a silent cast could hide a wrong argument (labels for targets, indices for
  inputs) and integers above 2**24 do not survive float32. File readers
  (:func:`load_xy_file`) cast integer columns, since a file has no float type.
- Data are checked for NaN/inf *after* the cast to the model's dtype, so values
  that overflow float32 (``1e39``) are caught too.
- An empty context (``N = 0``) is valid: the posterior is the prior.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import jax
import numpy as np

__all__ = ["check_dtype", "check_finite", "check_array", "check_pair", "check_positive_int",
           "check_batch_size", "check_key", "check_params", "load_xy_file"]

_SHAPES = {"x": "[N, x_dim]", "y": "[N, y_dim]"}


def _as_array(name: str, a) -> np.ndarray:
    if isinstance(a, jax.core.Tracer):
        raise ValueError(f"{name}: is a traced value; the checks read values on the host and cannot run under "
                         "jit/vmap (the public functions skip them when traced)")
    if a is None:
        raise ValueError(f"{name}: expected an array, got None")
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise ValueError(f"{name}: cannot be converted to an array ({e})") from e
    if arr.dtype == object:
        raise ValueError(f"{name}: expected a numeric array, got dtype object (ragged lists or mixed types?)")
    return arr


def check_dtype(name: str, arr: np.ndarray) -> None:
    """Real floating dtype, or an error that names the dtype's kind and the fix."""
    if np.issubdtype(arr.dtype, np.floating):
        return
    kinds = [(np.bool_, "boolean"), (np.integer, "integer"), (np.complexfloating, "complex"),
             (np.str_, "string"), (np.bytes_, "bytes")]
    kind = next((k for t, k in kinds if np.issubdtype(arr.dtype, t)), "non-numeric")
    fix = "; convert with .astype(float) if that is intended" if kind in ("integer", "boolean") else ""
    raise ValueError(f"{name}: expected a real floating-point array, got {kind} dtype {arr.dtype}{fix}")


def check_finite(name: str, arr: np.ndarray, why: str = "") -> None:
    """No NaN or inf; the message gives the count and the first index."""
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: contains {int(bad.sum())} non-finite value(s) (NaN or inf){why}, "
                         f"first at index {idx}")


def check_array(name: str, a, ndim: int, last_dim: int | None = None, allow_empty: bool = True,
                dim_name: str = "last dimension", dtype=None) -> np.ndarray:
    """Rank, trailing size, real floating dtype and finiteness of one array.
    With ``dtype``, returns the array cast to it (and checks finiteness after the cast)."""
    arr = _as_array(name, a)
    check_dtype(name, arr)
    if arr.ndim != ndim:
        shape = _SHAPES.get(name[:1], "[N, D]") if ndim == 2 else f"rank {ndim}"
        hint = "; for one feature use a[:, None]" if (ndim == 2 and arr.ndim == 1) else ""
        raise ValueError(f"{name}: expected a rank-{ndim} array {shape}, got shape {arr.shape}{hint}")
    if last_dim is not None and arr.shape[-1] != last_dim:
        raise ValueError(f"{name}: {dim_name} is {arr.shape[-1]} (shape {arr.shape}), "
                         f"but the model expects {last_dim}")
    if not allow_empty and arr.shape[0] == 0:
        raise ValueError(f"{name}: is empty (shape {arr.shape}); at least one point is needed")
    check_finite(name, arr)
    if dtype is not None:
        with np.errstate(over="ignore"):  # reported below, naming the argument
            arr = arr.astype(dtype)
        check_finite(name, arr, f" after conversion to the model's dtype {np.dtype(dtype).name} (overflow)")
    return arr


def check_pair(x_name: str, x, y_name: str, y, x_dim: int, y_dim: int, allow_empty: bool = True, dtype=None):
    """``x [N, x_dim]`` and ``y [N, y_dim]`` with the same ``N``."""
    x = check_array(x_name, x, 2, x_dim, allow_empty, "x_dim (last dimension)", dtype)
    y = check_array(y_name, y, 2, y_dim, allow_empty, "y_dim (last dimension)", dtype)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x_name} has {x.shape[0]} points but {y_name} has {y.shape[0]}: "
                         "they need the same first dimension N")
    return x, y


def check_positive_int(name: str, v, upper: int | None = None, upper_name: str = "") -> int:
    """A positive Python/NumPy integer (not a bool, not a float), at most ``upper``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name}: must be a positive integer, got {v!r} of type {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name}: must be a positive integer, got {v!r}")
    if upper is not None and v > upper:
        raise ValueError(f"{name}: {v} exceeds {upper_name} ({upper})")
    return int(v)


def check_batch_size(batch_size, num_points: int) -> int | None:
    """``None`` or a positive integer. One larger than every set it batches
    (``num_points``) is allowed, with a warning, and means one batch (``None``)."""
    if batch_size is None:
        return None
    batch_size = check_positive_int("batch_size", batch_size)
    if batch_size >= num_points:
        if batch_size > num_points > 0:
            warnings.warn(f"batch_size: {batch_size} exceeds the number of points ({num_points}); "
                          "using a single batch", UserWarning, stacklevel=3)
        return None
    return batch_size


def check_key(key) -> None:
    """A JAX PRNG key: ``jax.random.key(seed)`` (typed, shape ``()``) or
    ``jax.random.PRNGKey(seed)`` (uint32, shape ``(2,)``)."""
    hint = "pass jax.random.PRNGKey(seed) or jax.random.key(seed)"
    if isinstance(key, jax.core.Tracer):
        raise ValueError("key: is a traced value; the checks cannot run under jit/vmap")
    if not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise ValueError(f"key: expected a PRNG key, got {type(key).__name__} {key!r}; {hint}")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key: expected a single key, got a batch of shape {key.shape}; {hint}")
        return
    if key.dtype != np.uint32 or tuple(key.shape) != (2,):
        raise ValueError(f"key: expected a PRNG key (uint32 of shape (2,)), got {key.dtype} of shape "
                         f"{tuple(key.shape)}; {hint}")


def check_params(params, cls, what: str = "bnnp.init or train.load_run") -> None:
    """``params`` is a ``cls`` instance with finite leaves (a diverged or damaged
    model fails here, not as NaN predictions)."""
    if not isinstance(params, cls):
        raise ValueError(f"params: expected {cls.__name__} (from {what}), got {type(params).__name__}")
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(f"params: non-finite values in {jax.tree_util.keystr(path)} "
                             "(a diverged or damaged model?)")


# ----- files -------------------------------------------------------------------


def _numeric(what: str, p: Path, name: str, a) -> np.ndarray:
    """A file's array as float64: integers cast, other non-floats an error."""
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        a = a.astype(np.float64)
    check_dtype(f"{what}: array '{name}' in {p}", a)
    a = a.astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{what}: array '{name}' in {p} must be [N] or [N, D], got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{what}: '{name}' in {p} has {int(bad.sum())} missing or non-finite value(s), "
                         f"first at row {row}, column {col}")
    return a


def _read_npz(what: str, p: Path):
    try:
        with np.load(p, allow_pickle=False) as data:
            files = sorted(data.files)
            if "x" not in files:
                raise ValueError(f"{what}: {p} has no array 'x' (found {files})")
            return data["x"], (data["y"] if "y" in files else None)
    except ValueError as e:
        if str(e).startswith(what):
            raise
        raise ValueError(f"{what}: cannot read {p} as npz ({e})") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{what}: cannot read {p} as npz ({e})") from e


def _read_csv(what: str, p: Path):
    text = p.read_text().splitlines()
    rows = [r for r in text if r.strip()]
    if not rows:
        raise ValueError(f"{what}: {p} is empty; it needs a header row naming columns x... and y...")
    names = [n.strip() for n in rows[0].split(",")]
    xs = [i for i, n in enumerate(names) if n.startswith("x")]
    ys = [i for i, n in enumerate(names) if n.startswith("y")]
    if not xs or len(xs) + len(ys) != len(names):
        raise ValueError(f"{what}: {p} needs a header of columns named x... then y..., got {names}")
    values = np.empty((len(rows) - 1, len(names)))
    for r, line in enumerate(rows[1:], start=2):
        cells = line.split(",")
        if len(cells) != len(names):
            raise ValueError(f"{what}: {p} line {r} has {len(cells)} fields, the header has {len(names)}")
        for c, cell in enumerate(cells):
            try:
                values[r - 2, c] = float(cell)
            except ValueError:
                raise ValueError(f"{what}: {p} line {r}, column '{names[c]}': {cell.strip()!r} is not a number") from None
    return values[:, xs], (values[:, ys] if ys else None)


def load_xy_file(path: str, need_y: bool, what: str = "file") -> tuple[np.ndarray, np.ndarray | None]:
    """``x [N, x_dim]`` (and ``y [N, y_dim]``) as float64 from an ``.npz`` (arrays
    ``x``, ``y``) or a ``.csv`` (header naming columns ``x...`` then ``y...``).

    A header-only csv is an empty set (``N = 0``). Errors name ``what`` (e.g.
    ``--context``), the file and the offending row or column.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what}: file not found: {p}")
    if p.suffix == ".npz":
        x, y = _read_npz(what, p)
    elif p.suffix == ".csv":
        x, y = _read_csv(what, p)
    else:
        raise ValueError(f"{what}: unsupported file type {p.suffix!r} for {p} (use .npz or .csv)")
    x = _numeric(what, p, "x", x)
    if y is not None:
        y = _numeric(what, p, "y", y)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{what}: {p} has {x.shape[0]} x rows but {y.shape[0]} y rows")
    if need_y and y is None:
        raise ValueError(f"{what}: {p} has no y (an npz array 'y' or csv columns y...)")
    return x, y
