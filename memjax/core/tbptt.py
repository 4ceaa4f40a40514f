"""Truncated backpropagation through time as a scan over segments."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from memjax.core.scan import UNROLL_UP_TO
from memjax.core.scan import scan


def run_segments(apply_segment: Callable, memory, segments, *, truncate_every: int = 0,
                 unroll: bool | None = None):
  """Threads `memory` through `apply_segment(memory, segment) -> (memory, out)` over the
  leading axis of `segments` (a pytree of NxB... arrays).

  With truncate_every = k > 0, the memory entering segment i is detached when i % k == 0
  (i > 0), so gradients flow back through at most k segments. Returns (memory, outs).
  `unroll`: True unrolls, False scans, None (default) unrolls N <= UNROLL_UP_TO segments.
  """
  n = jax.tree.leaves(segments)[0].shape[0]
  if unroll is None:
    unroll = n <= UNROLL_UP_TO

  def body(memory, xs):
    i, seg = xs
    if truncate_every:
      memory = jax.lax.cond((i % truncate_every == 0) & (i > 0),
                            jax.lax.stop_gradient, lambda m: m, memory)
    return apply_segment(memory, seg)

  return scan(body, memory, (jnp.arange(n, dtype=jnp.int32), segments), unroll=unroll)


def split_segments(x_BxT: jax.Array, segment_len: int) -> jax.Array:
  """BxT... -> NxBxS... (segment-major, for scanning)."""
  b, t = x_BxT.shape[:2]
  if t % segment_len:
    raise ValueError(f"sequence length {t} is not a multiple of segment_len {segment_len}")
  x = x_BxT.reshape(b, t // segment_len, segment_len, *x_BxT.shape[2:])
  return jnp.swapaxes(x, 0, 1)


def merge_segments(x_NxBxS: jax.Array) -> jax.Array:
  """NxBxS... -> BxT..."""
  n, b, s = x_NxBxS.shape[:3]
  return jnp.swapaxes(x_NxBxS, 0, 1).reshape(b, n * s, *x_NxBxS.shape[3:])
