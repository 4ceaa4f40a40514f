"""Normalisation layers."""
import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
  """RMS normalisation over the last axis, computed in float32.

  `plus_one=True` stores the scale as an offset from 1 (Gemma's convention:
  y = x_hat * (1 + w)); otherwise y = x_hat * w (Llama, Qwen2).
  """

  def __init__(self, dim: int, *, eps: float = 1e-6, plus_one: bool = False,
               dtype=jnp.float32, param_dtype=jnp.float32):
    self.eps = eps
    self.plus_one = plus_one
    self.dtype = dtype
    init = jnp.zeros if plus_one else jnp.ones
    self.scale = nnx.Param(init((dim,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.scale[...], eps=self.eps, plus_one=self.plus_one).astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, *, eps: float, plus_one: bool = False) -> jax.Array:
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  s = scale.astype(jnp.float32)
  return y * (1.0 + s if plus_one else s)
