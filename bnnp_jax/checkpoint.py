"""Atomic training checkpoints (keep the last two).

A checkpoint is one pickle of plain NumPy leaves plus a SHA-256 of its
payload, written to a temporary file in the same directory, fsynced, and
renamed over the final name (``os.replace`` is atomic on POSIX), so a kill at
any moment leaves either the old or the new file, never a torn one. Restoring
needs a template pytree (a freshly initialised state) for the structure; the
leaves' shapes and dtypes are checked against it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{9})\.pkl$")


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint."""


def _path(directory: Path, step: int) -> Path:
    return directory / f"ckpt_{step:09d}.pkl"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save(directory: str | Path, step: int, state: Any, extra: dict | None = None, keep: int = 2) -> Path:
    """Write ``state`` (a pytree) atomically as step ``step``; prune to ``keep`` files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(state)]
    payload = pickle.dumps({"step": int(step), "leaves": leaves, "extra": extra or {}}, protocol=4)
    blob = pickle.dumps({"version": FORMAT_VERSION, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload})
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ckpt_tmp_")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        final = _path(directory, step)
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def _read(path: Path) -> dict:
    try:
        blob = pickle.loads(path.read_bytes())
        payload = blob["payload"]
        if blob.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path}: unsupported format version {blob.get('version')!r}")
        if hashlib.sha256(payload).hexdigest() != blob["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch")
        return pickle.loads(payload)
    except CheckpointError:
        raise
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} does not exist") from e
    except Exception as e:  # truncated or foreign file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a bnnp checkpoint ({type(e).__name__}: {e})") from e


def restore(path: str | Path, template: Any) -> tuple[int, Any, dict]:
    """``(step, state, extra)`` from ``path``, with the structure of ``template``."""
    path = Path(path)
    data = _read(path)
    ref_leaves, treedef = jax.tree.flatten(template)
    leaves = data["leaves"]
    if len(leaves) != len(ref_leaves):
        raise CheckpointError(f"checkpoint {path} holds {len(leaves)} arrays but the model expects {len(ref_leaves)}: "
                              "was it written with a different config?")
    for i, (a, r) in enumerate(zip(leaves, ref_leaves)):
        r = np.asarray(r)
        if a.shape != r.shape or a.dtype != r.dtype:
            raise CheckpointError(f"checkpoint {path}: array {i} is {a.shape} {a.dtype}, expected {r.shape} {r.dtype}")
    return data["step"], jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in leaves]), data["extra"]


def restore_latest(directory: str | Path, template: Any) -> tuple[int, Any, dict]:
    """Restore the newest readable checkpoint; a corrupt newest one falls back to
    the previous with a warning. Raises CheckpointError when none is usable."""
    paths = list_checkpoints(directory)
    if not paths:
        raise CheckpointError(f"no checkpoint found in {directory}")
    errors = []
    for path in reversed(paths):
        try:
            return restore(path, template)
        except CheckpointError as e:
            errors.append(str(e))
            import warnings

            warnings.warn(f"skipping unusable checkpoint: {e}")
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
