"""Short causal depthwise convolution on the input stream (token shift).

Mixing each token with the few before it lets a small attention model form
induction-style lookups (match the previous token, copy the next) in one
layer instead of two: recall models train many times faster with it.
"""
import jax
import jax.numpy as jnp
from flax import nnx


class TokenShift(nnx.Module):
  """y_t = sum_j w_j * x_{t-j}, j < width, per channel; w starts as identity."""

  def __init__(self, dim: int, width: int = 2, *, param_dtype=jnp.float32):
    if width < 1:
      raise ValueError(f"token shift width must be >= 1, got {width}")
    w = jnp.zeros((width, dim), param_dtype).at[0].set(1.0)
    self.weight = nnx.Param(w)
    self.width = width

  def __call__(self, x_BxTxD: jax.Array, prev_BxWxD: jax.Array | None = None):
    """Returns (y, tail): `tail` are the last width-1 inputs, to carry across segments."""
    b, _, d = x_BxTxD.shape
    w = self.weight[...]
    if prev_BxWxD is None:
      prev_BxWxD = jnp.zeros((b, self.width - 1, d), x_BxTxD.dtype)
    xp = jnp.concatenate([prev_BxWxD, x_BxTxD], axis=1)
    t = x_BxTxD.shape[1]
    y = sum(w[j] * xp[:, self.width - 1 - j: self.width - 1 - j + t] for j in range(self.width))
    return y.astype(x_BxTxD.dtype), xp[:, xp.shape[1] - (self.width - 1):]
