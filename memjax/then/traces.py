"""THEN memory traces: a fixed-capacity ring buffer of attention keys/values per layer.

The buffer is bounded (unlike an ever-growing list of past states): writing S
entries at the cursor overwrites the oldest ones. It is an explicit pytree,
passed into the model and returned, never hidden in a module.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TraceMemory:
  keys_BxLxCxKxD: jax.Array      # L layers, C capacity, K kv heads, D head dim
  values_BxLxCxKxD: jax.Array
  valid_BxC: jax.Array           # bool: slot holds a trace
  cursor_B: jax.Array            # int32: next slot to write

  @property
  def capacity(self) -> int:
    return self.valid_BxC.shape[1]


def init(batch: int, layers: int, capacity: int, kv_heads: int, head_dim: int,
         dtype=jnp.float32) -> TraceMemory:
  shape = (batch, layers, capacity, kv_heads, head_dim)
  return TraceMemory(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                     jnp.zeros((batch, capacity), bool), jnp.zeros((batch,), jnp.int32))


def write(mem: TraceMemory, keys_BxLxSxKxD: jax.Array, values_BxLxSxKxD: jax.Array,
          write_B: jax.Array | None = None) -> TraceMemory:
  """Appends S traces per row at the cursor (ring buffer). Rows with write_B False are untouched
  (incognito queries). If S exceeds the capacity only the last C traces are kept."""
  c = mem.capacity
  s = keys_BxLxSxKxD.shape[2]
  if s > c:
    keys_BxLxSxKxD, values_BxLxSxKxD = keys_BxLxSxKxD[:, :, -c:], values_BxLxSxKxD[:, :, -c:]
    mem = mem.replace(cursor_B=mem.cursor_B + (s - c))
    s = c
  # Slot j holds the new trace (j - cursor) mod C when that is < S: a gather of S rows, not a
  # one-hot matmul over the C slots (2 B L S C K D multiply-adds per write, forward and back).
  age_BxC = (jnp.arange(c) - mem.cursor_B[:, None]) % c
  hit_BxC = age_BxC < s
  if write_B is not None:
    hit_BxC &= write_B[:, None]
  src = jnp.minimum(age_BxC, s - 1)[:, None, :, None, None]
  new_k = jnp.take_along_axis(keys_BxLxSxKxD.astype(mem.keys_BxLxCxKxD.dtype), src, 2,
                              mode="clip")
  new_v = jnp.take_along_axis(values_BxLxSxKxD.astype(mem.values_BxLxCxKxD.dtype), src, 2,
                              mode="clip")
  sel = hit_BxC[:, None, :, None, None]
  cursor = mem.cursor_B + s if write_B is None else jnp.where(write_B, mem.cursor_B + s, mem.cursor_B)
  return TraceMemory(jnp.where(sel, new_k, mem.keys_BxLxCxKxD),
                     jnp.where(sel, new_v, mem.values_BxLxCxKxD),
                     mem.valid_BxC | hit_BxC, cursor % c)
