"""Which LAPACK calls of a compiled XLA CPU program may run at the same time.

jaxlib's batched CPU LAPACK kernels split a large batch over XLA's intra-op
thread pool and wait for the pieces on the calling thread. XLA CPU runs a
program's independent operations concurrently on that same pool, so two
batched LAPACK calls with no data path between them can each hold a pool
thread while waiting for pieces that no free thread can run: on 2 cores the
program never returns. Control dependencies (an ``optimization_barrier``) do
not order them, since XLA CPU schedules by data (buffer) dependencies; only a
data path does (:func:`bnnp_jax.core.linalg.after`).

:func:`unordered_lapack_calls` reads the optimised HLO text and lists every pair
of LAPACK calls (or loops/calls containing one) in the same computation with
no data path either way. An empty list means the program cannot hold two
LAPACK calls at once.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["unordered_lapack_calls", "lapack_call_count"]

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(")
_INSTR = re.compile(r"^\s+(?:ROOT\s+)?%([\w.\-]+)\s*=")
_TOKEN = re.compile(r"%([\w.\-]+)")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_CONTROL = re.compile(r"control-predecessors=\{[^}]*\}")
_LAPACK = 'custom_call_target="lapack_'


def _parse(hlo_text: str) -> dict:
    """``{computation: {instruction: (operands, called computations, is_lapack)}}`` in text order."""
    comps, current = {}, None
    for line in hlo_text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and line.rstrip().endswith("{"):
                current = comps.setdefault(m.group(1), {})
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        body = _CONTROL.sub("", line[m.end():])
        called = set(_CALLED.findall(body))
        for group in _BRANCHES.findall(body):
            called.update(_TOKEN.findall(group))
        operands = [t for t in _TOKEN.findall(body) if t not in called]
        current[m.group(1)] = (operands, called, _LAPACK in body)
    return comps


def _analyse(hlo_text: str):
    comps = _parse(hlo_text)

    @lru_cache(maxsize=None)
    def contains(comp: str) -> bool:
        return any(lap or any(contains(c) for c in called if c in comps)
                   for _, called, lap in comps.get(comp, {}).values())

    return comps, contains


def lapack_call_count(hlo_text: str) -> int:
    """How many LAPACK custom calls the program text holds (in any computation)."""
    return hlo_text.count(_LAPACK)


def unordered_lapack_calls(hlo_text: str) -> list[tuple[str, str, str]]:
    """Pairs ``(computation, a, b)`` of LAPACK calls (or ``while``/``call``/``conditional``
    instructions whose computations contain one) with no data path between ``a`` and
    ``b``: XLA CPU may run them at once. ``hlo_text``: ``jax.jit(f).lower(...).compile().as_text()``."""
    comps, contains = _analyse(hlo_text)
    pairs = []
    for name, instrs in comps.items():
        marked = [i for i, (_, called, lap) in instrs.items()
                  if lap or any(contains(c) for c in called if c in comps)]
        if len(marked) < 2:
            continue
        ancestors: dict[str, set] = {}

        def anc(i):  # every instruction with a data path into i
            if i not in ancestors:
                out = set()
                stack = [o for o in instrs[i][0] if o in instrs]
                while stack:
                    o = stack.pop()
                    if o in out:
                        continue
                    out.add(o)
                    stack.extend(p for p in instrs[o][0] if p in instrs)
                ancestors[i] = out
            return ancestors[i]

        for j, a in enumerate(marked):
            for b in marked[j + 1:]:
                if a not in anc(b) and b not in anc(a):
                    pairs.append((name, a, b))
    return pairs
