"""Image pixel-regression tasks (SPEC section 11, "Images").

A task is one image seen as a function from pixel coordinates to intensity:
``x`` = (column, row) coordinates in ``[-1, 1]^2`` (pixel centres of an
``H x W`` image at ``linspace(-1, 1, W) x linspace(-1, 1, H)``), ``y`` =
intensity scaled to ``[0, 1]`` (not standardised). A finer grid over the same
square (e.g. 16 x 16 for 8 x 8 images) gives super-resolution targets.

Data: sklearn's bundled 8 x 8 digits (offline), or real MNIST from a
user-supplied IDX (optionally gzipped) or ``.npz`` file.
"""

from __future__ import annotations

import gzip
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np

from bnnp_jax.data.synthetic import float_dtype, jit_sampler, sample_from_pool
from bnnp_jax.validation import check_finite

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


def _read_idx(raw: bytes, path: str) -> np.ndarray:
    """Parse an IDX file (big-endian header ``0 0 type ndim``, then the dims)."""
    types = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in types:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=types[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX header promises shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def load_mnist(path: str, split: str = "train", dtype=None) -> np.ndarray:
    """Images ``[I, H, W]`` in ``[0, 1]`` from a user-supplied MNIST file.

    Accepts an IDX image file (e.g. ``train-images-idx3-ubyte``, optionally
    gzipped) or an ``.npz`` with ``x_train``/``x_test`` (``split`` picks) or
    ``images``. Integer data and data with maximum above 1 are divided by 255.
    NaN or inf pixels raise ValueError naming the file, the array and the first bad index.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not os.path.exists(path):
        raise ValueError(f"path {path!r} does not exist")
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
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
