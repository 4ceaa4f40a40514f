"""One scan-or-unroll switch for every recurrence (TBPTT, HRM, TRM, denoising)."""
from __future__ import annotations

import jax


def scan(f, init, xs=None, length: int | None = None, *, unroll: bool = False):
  """`jax.lax.scan`; with `unroll` the same loop fully unrolled: the debug path, the same
  numbers, a compile time that grows with the length (the scan's does not)."""
  n = length if xs is None else jax.tree.leaves(xs)[0].shape[0]
  return jax.lax.scan(f, init, xs, length=length, unroll=max(n, 1) if unroll else 1)
