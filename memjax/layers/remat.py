"""Rematerialisation of blocks: recompute a block's activations in the backward pass.

`remat(fn)(block, *args)` is `fn(block, *args)` under jax.checkpoint: the forward keeps only
the block's inputs, the backward runs the block again. Same values; peak activation memory
drops from every block's intermediates to one block's at a time, for about one extra forward.
The block goes in as (graphdef, state) and is merged inside, so nothing of it is mutated across
the checkpoint boundary (nnx.remat raised TraceContextError on modules merged inside a jitted
loss, flax 0.12.8); blocks here keep no mutable state, so nothing needs writing back.
"""
import jax
from flax import nnx


def remat(fn, enabled: bool = True):
  """fn(block, *args) rematerialised when `enabled`; otherwise fn itself."""
  if not enabled:
    return fn

  def call(block, *args):
    graphdef, state = nnx.split(block)
    return jax.checkpoint(lambda s, *a: fn(nnx.merge(graphdef, s), *a))(state, *args)

  return call
