"""The memory protocol: what the yardstick and the loop do to any memory state.

A memory state is a pytree whose leaves have the batch on axis 0. The four operations
have tree-wide defaults, so a plain `flax.struct.dataclass` of arrays follows the
protocol as it is:

  zeroed(m)    every leaf emptied: floats 0, bools False, ints 0. Auxiliary parts that
               carry information (token-shift tails, validity flags, cursors) included.
  shuffled(m)  the whole state rolled by one row across the batch: row b gets row b-1's
               state. With batch 1 it is the identity.
  flat(m)      B x M float32: every floating leaf flattened per row (for memory_cosine).
  reset(m, start_B)  rows where a new sequence starts set to `zeroed`.

A memory that needs another meaning defines the method of the same name (`zeroed`,
`shuffled`, `flat`, `reset(start_B)`) and says what it means in its docstring; the
functions here call it. Designs never branch on the yardstick's modes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _rows(start_B: jax.Array, x: jax.Array) -> jax.Array:
  return start_B.reshape((-1,) + (1,) * (x.ndim - 1))


def zeroed(memory):
  if hasattr(memory, "zeroed"):
    return memory.zeroed()
  return jax.tree.map(jnp.zeros_like, memory)


def shuffled(memory):
  if hasattr(memory, "shuffled"):
    return memory.shuffled()
  return jax.tree.map(lambda x: jnp.roll(x, 1, axis=0), memory)


def flat(memory) -> jax.Array:
  if hasattr(memory, "flat"):
    return memory.flat()
  leaves = [x for x in jax.tree.leaves(memory) if jnp.issubdtype(x.dtype, jnp.floating)]
  if not leaves:
    raise ValueError("memory has no floating-point leaf to flatten")
  b = leaves[0].shape[0]
  return jnp.concatenate([x.reshape(b, -1).astype(jnp.float32) for x in leaves], axis=1)


def reset(memory, start_B: jax.Array):
  if hasattr(memory, "reset"):
    return memory.reset(start_B)
  return jax.tree.map(lambda x: jnp.where(_rows(start_B, x), jnp.zeros_like(x), x), memory)


def batch_size(memory) -> int:
  return jax.tree.leaves(memory)[0].shape[0]
