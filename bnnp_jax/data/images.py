"""Image pixel-regression tasks (SPEC section 11, "Images").

A task is one image seen as a function from pixel coordinates to intensity:
``x`` = (column, row) coordinates in ``[-1, 1]^2`` (pixel centres of an
``H x W`` image at ``linspace(-1, 1, W) x linspace(-1, 1, H)``), ``y`` =
intensity scaled to ``[0, 1]`` (not standardised). A finer grid over the same
square (e.g. 16 x 16 for 8 x 8 images) gives super-resolution targets.

Data: sklearn's bundled 8 x 8 digits (offline), or real MNIST from a
user-supplied IDX (optionally gzipped) or ``.npz`` file; :func:`load_mnist_dataset`
reads labelled MNIST (a Keras-layout ``.npz`` or a directory of the four IDX files).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.data.synthetic import float_dtype, jit_sampler, sample_from_pool
from bnnp_jax.validation import check_finite

__all__ = ["pixel_grid", "image_task", "fine_grid", "sample_images", "load_digits_images", "split_indices",
           "digits_split", "MNIST_KEYS", "MNIST_IDX_FILES", "read_idx_file", "load_mnist_dataset",
           "load_mnist"]

Array = jax.Array


def pixel_grid(height: int, width: int, dtype=None) -> Array:
    """Pixel-centre coordinates ``[H * W, 2]`` in row-major (image) order, columns (u, v).

    ``u = linspace(-1, 1, W)[col]``, ``v = linspace(-1, 1, H)[row]``, so grids of
    different resolutions cover the same square and ``image.reshape(-1)`` lines
    up with the rows of the grid.
    """
    if int(height) < 2 or int(width) < 2:
        raise ValueError(f"height and width must be >= 2, got {height} x {width}")
    dtype = float_dtype(dtype)
    v, u = jnp.meshgrid(jnp.linspace(-1, 1, int(height), dtype=dtype), jnp.linspace(-1, 1, int(width), dtype=dtype),
                        indexing="ij")
    return jnp.stack([u.reshape(-1), v.reshape(-1)], axis=-1)


def image_task(image: Array) -> tuple[Array, Array]:
    """The full grid of one image ``[H, W]`` -> ``(x [H * W, 2], y [H * W, 1])``."""
    image = jnp.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must have shape [H, W], got {image.shape}")
    return pixel_grid(*image.shape, dtype=image.dtype), image.reshape(-1, 1)


def fine_grid(height: int, width: int, factor: int = 2, dtype=None) -> Array:
    """Super-resolution inputs ``[(factor H) * (factor W), 2]`` over the same square."""
    if int(factor) < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return pixel_grid(int(factor) * int(height), int(factor) * int(width), dtype)


@jit_sampler(traced=("key", "images"))
def sample_images(key, images, num_tasks, n_max, n_range):
    """Pixel-regression tasks: each picks an image uniformly and a random pixel subset.

    Args:
      images: ``[I, H, W]`` intensities (a jnp array; may be traced).
      num_tasks, n_max, n_range: static sizes, ``n ~ U{n_range[0], ..., n_range[1] - 1}``.
    Returns ``(x [T, n_max, 2], y [T, n_max, 1], mask [T, n_max])`` with padding zeroed.
    """
    images = jnp.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape [I, H, W], got {images.shape}")
    num, height, width = images.shape
    grid = pixel_grid(height, width, images.dtype)
    return sample_from_pool(key, grid, images.reshape(num, height * width, 1), None, num_tasks, n_max, n_range)


def load_digits_images(dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1797 bundled 8 x 8 digits: ``(images [1797, 8, 8] in [0, 1], labels [1797])``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(float_dtype(dtype)), data.target.astype(np.int32)


def split_indices(num_images: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split by image index: ``(train_idx, test_idx)``, disjoint, covering all."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    num_test = int(round(float(test_fraction) * num_images))
    if not 0 < num_test < num_images:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty split of {num_images} images")
    perm = np.random.default_rng(seed).permutation(num_images)
    return np.sort(perm[num_test:]), np.sort(perm[:num_test])


def digits_split(split: str = "train", test_fraction: float = 0.2, seed: int = 0, dtype=None):
    """One side of the seeded digits split: ``(images [I, 8, 8], labels [I])``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = load_digits_images(dtype)
    train_idx, test_idx = split_indices(len(images), test_fraction, seed)
    idx = train_idx if split == "train" else test_idx
    return images[idx], labels[idx]


# The four files MNIST ships in (http://yann.lecun.com/exdb/mnist/), each optionally gzipped.
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
MNIST_IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
                   "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SOURCE_HINT = ("a Keras-layout .npz (arrays x_train, y_train, x_test, y_test) or a directory holding "
                "MNIST's four IDX files (" + ", ".join(MNIST_IDX_FILES.values()) + "; each may end in .gz)")


def _read_idx(raw: bytes, path: str, ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file: magic number ``0x00 0x00 type ndim`` (big-endian), the ``ndim``
    dimensions as big-endian uint32, then the data. ``ndim`` given: the file must have
    that many dimensions (3 for an images file, magic 0x00000803; 1 for labels, 0x00000801)."""
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic is None or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        got = ": the file is shorter than 4 bytes" if magic is None else f" 0x{magic:08X}"
        raise ValueError(f"{path} is not an IDX file (bad magic number{got}; an IDX file starts with two zero "
                         "bytes, a type byte in {0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E} and the number of dimensions, "
                         "e.g. 0x00000803 for MNIST images, 0x00000801 for labels)")
    if ndim is not None and raw[3] != ndim:
        kind = {3: "an images file", 1: "a labels file"}.get(ndim, f"a {ndim}-dimensional file")
        raise ValueError(f"{path}: wrong magic number 0x{magic:08X} ({raw[3]} dimension(s)); {kind} needs "
                         f"0x{(raw[2] << 8) | ndim:08X} ({ndim} dimension(s)) - "
                         "are the images and labels files swapped?")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, the magic number promises {header})")
    shape = struct.unpack(f">{raw[3]}I", raw[4:header])
    itemsize = np.dtype(_IDX_TYPES[raw[2]]).itemsize
    if (len(raw) - header) % itemsize:
        raise ValueError(f"{path}: IDX header promises shape {shape} but the data is not a whole number of "
                         f"{itemsize}-byte values ({len(raw) - header} bytes)")
    data = np.frombuffer(raw, dtype=_IDX_TYPES[raw[2]], offset=header)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX header promises shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def _read_bytes(path) -> bytes:
    """A file's bytes, gunzipped when it starts with gzip's magic number."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip file ({e})") from None
    return raw


def read_idx_file(path, ndim: int | None = None) -> np.ndarray:
    """One IDX file (plain or gzipped) as an array; see :func:`_read_idx` for ``ndim``."""
    return _read_idx(_read_bytes(path), str(path), ndim)


def _idx_path(directory: Path, key: str, what: str) -> Path:
    """The IDX file of ``key`` in an MNIST directory: ``train-images-idx3-ubyte`` or the
    ``train-images.idx3-ubyte`` spelling, each plain or ``.gz``."""
    stem = MNIST_IDX_FILES[key]
    names = (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz")
    for name in names:
        if (directory / name).is_file():
            return directory / name
    present = sorted(p.name for p in directory.iterdir())[:12]
    raise ValueError(f"{what} {str(directory)!r}: missing file {stem} (or {stem}.gz) for {key}; the directory "
                     f"holds {present}. Expected {_SOURCE_HINT}")


def _mnist_arrays(path: str, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The four raw arrays and, per array, where it came from (for error messages)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{what} {path!r}: does not exist; expected {_SOURCE_HINT}")
    if p.is_dir():
        files = {k: _idx_path(p, k, what) for k in MNIST_KEYS}
        try:
            arrays = {k: read_idx_file(f, ndim=3 if k.startswith("x") else 1) for k, f in files.items()}
        except ValueError as e:
            raise ValueError(f"{what} {e}") from None
        return arrays, {k: f"{what} {str(f)!r}" for k, f in files.items()}
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"\x1f\x8b":  # gzipped: look at the decompressed start
        try:
            with gzip.open(p, "rb") as fh:
                head = fh.read(4)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{what} {path!r}: corrupt gzip file ({e})") from None
    if head != b"PK\x03\x04":  # not a zip container (.npz)
        if len(head) == 4 and head[0] == 0 and head[1] == 0 and head[2] in _IDX_TYPES:
            raise ValueError(f"{what} {path!r}: is a single IDX file; pass the directory that holds all four "
                             f"MNIST files ({', '.join(MNIST_IDX_FILES.values())}) instead")
        raise ValueError(f"{what} {path!r}: neither an .npz archive nor an MNIST directory; expected {_SOURCE_HINT}")
    try:
        with np.load(p, allow_pickle=False) as npz:
            missing = [k for k in MNIST_KEYS if k not in npz.files]
            if missing:
                raise ValueError(f"{what} {path!r}: lacks arrays {missing}; expected {list(MNIST_KEYS)} "
                                 f"(the Keras mnist.npz layout), found {npz.files}")
            arrays = {k: np.asarray(npz[k]) for k in MNIST_KEYS}
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{what} {path!r}: unreadable .npz ({e})") from None
    return arrays, {k: f"{what} {path!r}: array {k!r}" for k in MNIST_KEYS}


def _check_mnist(arrays: dict[str, np.ndarray], where: dict[str, str]) -> dict[str, np.ndarray]:
    """Shapes, matching counts, finite values, pixel range and labels 0..9; images come back
    ``[N, H, W]`` (a flat ``[N, D]`` with square ``D`` is reshaped)."""
    out = {}
    for split in ("train", "test"):
        xk, yk = f"x_{split}", f"y_{split}"
        x, y = arrays[xk], arrays[yk]
        for k, a in ((xk, x), (yk, y)):
            if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
                raise ValueError(f"{where[k]}: expected a numeric array, got dtype {a.dtype}")
            if np.issubdtype(a.dtype, np.floating):
                check_finite(where[k], a, " (NaN pixels or labels would reach training as NaN losses)")
        if x.ndim == 2:
            side = math.isqrt(x.shape[1])
            if side * side != x.shape[1]:
                raise ValueError(f"{where[xk]}: flat images [N, D] need a square D, got shape {x.shape}")
            x = x.reshape(len(x), side, side)
        if x.ndim != 3:
            raise ValueError(f"{where[xk]}: images must have shape [N, H, W], got {x.shape}")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"{where[yk]}: labels must have shape [N], got {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"{where[xk]}: shape mismatch between images and labels: {xk} holds {len(x)} "
                             f"images (shape {x.shape}) but {yk} holds {len(y)} labels (shape {y.shape})")
        if len(x) == 0:
            raise ValueError(f"{where[xk]}: holds no images")
        if np.any(y != np.round(y)) or y.min() < 0 or y.max() > 9:
            bad = np.flatnonzero((y != np.round(y)) | (y < 0) | (y > 9))[0]
            raise ValueError(f"{where[yk]}: labels must be integers 0..9 (ten digit classes), "
                             f"got {y[bad]} at index {bad}")
        if x.min() < 0 or x.max() > 255:
            raise ValueError(f"{where[xk]}: pixels must lie in [0, 255] (or [0, 1]), "
                             f"got range [{x.min()}, {x.max()}]")
        out[xk], out[yk] = x, y
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise ValueError(f"{where['x_test']}: test images are {out['x_test'].shape[1:]} but training images are "
                         f"{out['x_train'].shape[1:]}")
    return out


def load_mnist_dataset(path: str, what: str = "mnist", dtype=np.float32) -> tuple[np.ndarray, ...]:
    """Labelled MNIST from a user-supplied file: ``(x_train [N, H, W], y_train [N], x_test, y_test)``,
    pixels in ``[0, 1]`` as ``dtype``, labels int32 in 0..9.

    ``path`` is a Keras-layout ``.npz`` (``x_train, y_train, x_test, y_test``, as keras'
    ``mnist.npz``) or a directory holding MNIST's four IDX files
    (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each plain or ``.gz``). Integer pixels, or float pixels
    with a maximum above 1, are divided by 255. Every problem (missing file or array, wrong
    IDX magic number, images and labels of different lengths, NaN, labels outside 0..9,
    pixels outside [0, 255]) raises a ValueError that starts with ``what`` (e.g. the
    command-line option) and the offending file.
    """
    arrays, where = _mnist_arrays(str(path), what)
    arrays = _check_mnist(arrays, where)
    x_tr, x_te = arrays["x_train"], arrays["x_test"]
    scale = 255.0 if (np.issubdtype(x_tr.dtype, np.integer) or max(x_tr.max(), x_te.max()) > 1.0) else 1.0
    as_x = lambda a: (np.asarray(a, np.float32) / np.float32(scale)).astype(dtype, copy=False)
    return as_x(x_tr), arrays["y_train"].astype(np.int32), as_x(x_te), arrays["y_test"].astype(np.int32)


def load_mnist(path: str, split: str = "train", dtype=None) -> np.ndarray:
    """Images ``[I, H, W]`` in ``[0, 1]`` from a user-supplied MNIST file.

    Accepts an IDX image file (e.g. ``train-images-idx3-ubyte``, optionally
    gzipped), a directory holding MNIST's IDX files (``split`` picks
    ``train-images-idx3-ubyte`` or ``t10k-images-idx3-ubyte``), or an ``.npz``
    with ``x_train``/``x_test`` (``split`` picks) or ``images``. Integer data and
    data with maximum above 1 are divided by 255. NaN or inf pixels raise
    ValueError naming the file, the array and the first bad index.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not os.path.exists(path):
        raise ValueError(f"path {path!r} does not exist")
    if os.path.isdir(path):
        path = str(_idx_path(Path(path), f"x_{split}", "mnist directory"))
    raw = _read_bytes(path)
    if raw[:4] == b"PK\x03\x04":  # zip container: .npz
        with np.load(path) as npz:
            key = next((k for k in (f"x_{split}", "images") if k in npz.files), None)
            if key is None:
                raise ValueError(f"{path}: .npz needs an array 'x_{split}' or 'images', found {npz.files}")
            images = np.asarray(npz[key])
        source = f"{path}: array {key!r}"
    else:
        images = _read_idx(raw, path)
        source = f"{path}: IDX data"
    if images.ndim != 3:
        raise ValueError(f"{path}: images must have 3 dims [I, H, W], got shape {images.shape}")
    if np.issubdtype(images.dtype, np.floating):  # NaN pixels would reach training as NaN losses
        check_finite(source, images)
    is_int = np.issubdtype(images.dtype, np.integer)
    images = images.astype(np.float64)
    if is_int or images.max() > 1.0:
        images = images / 255.0
    return images.astype(float_dtype(dtype))
