"""The chunked training driver shared by every optimisation and annealing loop.

A loop of ``total`` steps runs as jitted chunks of at most ``chunk`` steps (one
compiled ``lax.scan`` each, so Python is entered once per chunk), under one tqdm
bar. ``run_chunk(carry, start, n) -> (carry, out)`` runs steps ``start ..
start + n - 1``; ``check(out, start)`` may raise before the chunk's carry is kept
(a diverged chunk never replaces the last good state); ``postfix(out, n,
seconds)`` labels the bar; ``on_chunk(carry, out, seconds)`` sees every kept
chunk (checkpoints, evaluation, logging). Returns the final carry and the
chunks' outputs in order. The meta-training loop, the baselines' optimisers,
MetaPrior's fits and AIS all run on it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

__all__ = ["finite_check", "run_chunks"]


def run_chunks(run_chunk: Callable[[Any, int, int], tuple[Any, Any]], carry: Any, total: int, chunk: int, *,
               start: int = 0, desc: str = "", progress: bool = True,
               check: Callable[[Any, int], None] | None = None,
               postfix: Callable[[Any, int, float], dict] | None = None,
               on_chunk: Callable[[Any, Any, float], None] | None = None,
               stop: Callable[[], bool] | None = None,
               **bar_options) -> tuple[Any, list]:
    """Run steps ``start .. total - 1`` in chunks of at most ``chunk``, or until ``stop()``
    is true after a chunk; see the module docstring."""
    outs = []
    with tqdm(total=total, initial=start, desc=desc, disable=not progress, leave=bar_options.pop("leave", False),
              **bar_options) as bar:
        while start < total and not (stop is not None and stop()):
            n = min(chunk, total - start)
            tic = time.perf_counter()
            new_carry, out = run_chunk(carry, start, n)
            out = jax.block_until_ready(out)
            seconds = time.perf_counter() - tic
            if check is not None:
                check(out, start)
            carry = new_carry
            outs.append(out)
            start += n
            bar.update(n)
            if postfix is not None:
                bar.set_postfix(**postfix(out, n, seconds))
            if on_chunk is not None:
                on_chunk(carry, out, seconds)
    return carry, outs


def finite_check(desc: str) -> Callable[[Any, int], None]:
    """A ``check`` for :func:`run_chunks`: raise ``FloatingPointError`` naming ``desc`` and
    the first step whose loss is not finite. Losses ``[n]`` are one run's; ``[B, n]`` are a
    batch of runs (the step axis last), and the error names the run too."""

    def check(losses, start: int) -> None:
        finite = np.isfinite(np.asarray(losses))
        if not np.all(finite):
            first = np.unravel_index(int(np.argmin(finite.reshape(-1))), finite.shape)
            where = f" in fit {first[0]}" if finite.ndim > 1 else ""
            raise FloatingPointError(f"{desc}: non-finite loss at step {start + int(first[-1])}{where}")

    return check
