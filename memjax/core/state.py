"""TrainState: everything a step reads and returns, one pytree."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar
  params: Any
  opt_state: Any
  rng: jax.Array           # raw uint32 key data; per-step keys are fold_in(rng, step)
  memory: Any              # persistent memory across batches (() when none)
  aux: Any = ()            # other training state of the system (guard counters)

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, rng: jax.Array, memory=(), aux=()):
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
               else rng, memory=memory, aux=aux)

  def step_key(self) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)
