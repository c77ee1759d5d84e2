"""Atomic training checkpoints (keep the last two).

File layout: an 8-byte magic ``b"BNNPCKPT"``, a 4-byte little-endian format
version, the 32-byte SHA-256 of the payload, then the payload (a pickle of the
step, the pytree's leaves as NumPy arrays and an ``extra`` dict). The payload
is unpickled only after its checksum matches, so a truncated, bit-flipped or
foreign file is reported as corrupt and never reaches ``pickle``. (Checksums
guard against damage, not against a crafted file: load only checkpoints you
trust, as with any pickle.)

A file is written to a temporary name in the same directory, fsynced, and
renamed over the final name (``os.replace`` is atomic on POSIX), then the
directory is fsynced, so a kill at any moment leaves the old file or the new
one, never a torn one; temporary files orphaned by a kill are removed by the
next save. Restoring needs a template pytree (a freshly initialised state) for
the structure; the leaves' count, shapes and dtypes are checked against it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["FORMAT_VERSION", "MAGIC", "CheckpointError", "list_checkpoints", "save", "restore",
           "restore_latest", "write_text_atomic"]

FORMAT_VERSION = 2
MAGIC = b"BNNPCKPT"
_HEADER = len(MAGIC) + 4 + 32
_TMP_PREFIX = ".ckpt_tmp_"
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


def _remove_orphans(directory: Path) -> None:
    """Temporary files left by a writer killed before its rename (one writer per directory)."""
    for p in directory.glob(_TMP_PREFIX + "*"):
        p.unlink(missing_ok=True)


def save(directory: str | Path, step: int, state: Any, extra: dict | None = None, keep: int = 2) -> Path:
    """Write ``state`` (a pytree) atomically as step ``step``; prune to ``keep`` files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_orphans(directory)
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(state)]
    payload = pickle.dumps({"step": int(step), "leaves": leaves, "extra": extra or {}}, protocol=4)
    blob = MAGIC + FORMAT_VERSION.to_bytes(4, "little") + hashlib.sha256(payload).digest() + payload
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX)
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
        blob = path.read_bytes()
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} does not exist") from e
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e})") from e
    if blob[:1] == b"\x80" and not blob.startswith(MAGIC):
        return _read_v1(path, blob)
    if not blob.startswith(MAGIC):
        raise CheckpointError(f"checkpoint {path} is corrupt or not a bnnp checkpoint (no {MAGIC!r} header; "
                              f"{len(blob)} bytes)")
    if len(blob) < _HEADER:
        raise CheckpointError(f"checkpoint {path} is corrupt: truncated header ({len(blob)} bytes)")
    version = int.from_bytes(blob[len(MAGIC):len(MAGIC) + 4], "little")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: unsupported format version {version} (this code reads "
                              f"{FORMAT_VERSION})")
    digest, payload = blob[len(MAGIC) + 4:_HEADER], blob[_HEADER:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch (truncated or damaged file)")
    try:
        data = pickle.loads(payload)
        if not isinstance(data, dict) or not {"step", "leaves", "extra"} <= set(data):
            raise TypeError("unexpected payload layout")
    except Exception as e:  # intact bytes that do not hold a checkpoint
        raise CheckpointError(f"checkpoint {path} holds no bnnp checkpoint ({type(e).__name__}: {e})") from e
    return data


def _read_v1(path: Path, blob: bytes) -> dict:
    """Format 1 (a pickled envelope around the checksummed payload), still readable."""
    try:
        env = pickle.loads(blob)
        payload = env["payload"]
        ok = env.get("version") == 1 and hashlib.sha256(payload).hexdigest() == env["sha256"]
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a bnnp checkpoint ({type(e).__name__}: {e})") from e
    if not ok:
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch (format 1)")
    return pickle.loads(payload)


def restore(path: str | Path, template: Any) -> tuple[int, Any, dict]:
    """``(step, state, extra)`` from ``path``, with the structure of ``template``."""
    path = Path(path)
    data = _read(path)
    ref, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = data["leaves"]
    if len(leaves) != len(ref):
        raise CheckpointError(f"checkpoint {path} holds {len(leaves)} arrays but the model expects {len(ref)}: "
                              "was it written with a different config?")
    for a, (where, r) in zip(leaves, ref):
        r = np.asarray(r)
        if a.shape != r.shape or a.dtype != r.dtype:
            raise CheckpointError(f"checkpoint {path}: {jax.tree_util.keystr(where)} is {a.shape} {a.dtype}, the "
                                  f"model expects {r.shape} {r.dtype}: was it written with a different config?")
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
            warnings.warn(f"skipping unusable checkpoint: {e}", stacklevel=2)
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` (named for this process, so
    writers in two processes never share it) and rename it over ``path``: a kill leaves
    the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
