"""One scan-or-unroll switch for every recurrence (TBPTT, HRM, TRM, denoising)."""
from __future__ import annotations

import jax

# Loops this short are unrolled where a caller asks for the default (unroll=None: TBPTT's
# segment loop): the same numbers, and on the 2-core CPU a cheaper step (THEN's 3 segments,
# BUILD_NOTES issue 16: the scanned backward slices its saved activations per iteration and
# transposes them in copies the unrolled one does not make). Compile time is bounded by this
# count; longer loops stay a scan.
UNROLL_UP_TO = 4


def scan(f, init, xs=None, length: int | None = None, *, unroll: bool = False):
  """`jax.lax.scan`; with `unroll` the same loop fully unrolled: the debug path, the same
  numbers, a compile time that grows with the length (the scan's does not)."""
  n = length if xs is None else jax.tree.leaves(xs)[0].shape[0]
  return jax.lax.scan(f, init, xs, length=length, unroll=max(n, 1) if unroll else 1)
