"""Input checks for user-facing entry points (kept out of the jitted core).

Each check raises ``ValueError`` naming the argument and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def check_array(name: str, a, ndim: int, last_dim: int | None = None, allow_empty: bool = True) -> np.ndarray:
    """Rank, trailing size, real floating dtype, and finiteness of one array."""
    arr = np.asarray(a)
    if arr.dtype == object:
        raise ValueError(f"{name}: expected a numeric array, got dtype object")
    if not (np.issubdtype(arr.dtype, np.floating)):
        kind = "integer" if np.issubdtype(arr.dtype, np.integer) else str(arr.dtype)
        raise ValueError(f"{name}: expected a floating-point array, got {kind} dtype {arr.dtype}; "
                         f"convert with .astype(float) if that is intended")
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected rank {ndim} (shape [N, D]), got shape {arr.shape}")
    if last_dim is not None and arr.shape[-1] != last_dim:
        raise ValueError(f"{name}: last dimension is {arr.shape[-1]}, but the model expects {last_dim}")
    if not allow_empty and arr.shape[0] == 0:
        raise ValueError(f"{name}: is empty")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: contains {int(bad.sum())} non-finite value(s) (NaN or inf), first at index {idx}")
    return arr


def check_pair(x_name: str, x, y_name: str, y, x_dim: int, y_dim: int, allow_empty: bool = True):
    x = check_array(x_name, x, 2, x_dim, allow_empty)
    y = check_array(y_name, y, 2, y_dim, allow_empty)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x_name} has {x.shape[0]} points but {y_name} has {y.shape[0]}")
    return x, y


def check_positive_int(name: str, v, upper: int | None = None, upper_name: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}: must be a positive integer, got {v!r}")
    if upper is not None and v > upper:
        raise ValueError(f"{name}: {v} exceeds {upper_name} ({upper})")
    return int(v)


def load_xy_file(path: str, need_y: bool, what: str = "file") -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``x`` (and ``y``) from an ``.npz`` (arrays ``x``, ``y``) or ``.csv``
    (header row naming columns ``x...`` and ``y...``, or ``x`` columns only)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what}: file not found: {p}")
    if p.suffix == ".npz":
        try:
            data = np.load(p)
        except Exception as e:
            raise ValueError(f"{what}: cannot read {p} as npz ({e})") from e
        if "x" not in data:
            raise ValueError(f"{what}: {p} has no array 'x' (found {sorted(data.files)})")
        x = np.asarray(data["x"], float) if np.issubdtype(data["x"].dtype, np.number) else data["x"]
        y = data["y"] if "y" in data else None
    elif p.suffix == ".csv":
        try:
            table = np.genfromtxt(p, delimiter=",", names=True)
        except Exception as e:
            raise ValueError(f"{what}: cannot parse {p} as csv ({e})") from e
        names = table.dtype.names or ()
        xs = [n for n in names if n.startswith("x")]
        ys = [n for n in names if n.startswith("y")]
        if not xs:
            raise ValueError(f"{what}: {p} needs a header with columns named x..., got {list(names)}")
        x = np.stack([np.atleast_1d(table[n]) for n in xs], -1).astype(float)
        y = np.stack([np.atleast_1d(table[n]) for n in ys], -1).astype(float) if ys else None
    else:
        raise ValueError(f"{what}: unsupported file type {p.suffix!r} (use .npz or .csv)")
    if x.ndim == 1:
        x = x[:, None]
    if y is not None and np.ndim(y) == 1:
        y = np.asarray(y)[:, None]
    if need_y and y is None:
        raise ValueError(f"{what}: {p} has no 'y'")
    return x, y
