"""Gated feed-forward blocks (SwiGLU, GeGLU)."""
import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


class GatedMLP(nnx.Module):
  """down(act(gate(x)) * up(x)): SwiGLU with act='silu', GeGLU with act='gelu_tanh'."""

  def __init__(self, dim: int, hidden: int, *, act: str = "silu", use_bias: bool = False,
               rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    if act not in ACTIVATIONS:
      raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    self.act = act
    kw = dict(use_bias=use_bias, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.gate = nnx.Linear(dim, hidden, **kw)
    self.up = nnx.Linear(dim, hidden, **kw)
    self.down = nnx.Linear(hidden, dim, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(ACTIVATIONS[self.act](self.gate(x)) * self.up(x))
