"""Rotary position embeddings (the rotate-half layout used by Hugging Face checkpoints)."""
import jax
import jax.numpy as jnp


def rope_frequencies(head_dim: int, theta: float) -> jax.Array:
  return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def apply_rope(x_BxTxHxD: jax.Array, positions_BxT: jax.Array, *, theta: float = 10_000.0,
               scale: float = 1.0) -> jax.Array:
  """Rotates pairs (i, i + D/2) of each head by position * frequency_i.

  `scale` divides positions (linear RoPE scaling); 1.0 means none.
  """
  d = x_BxTxHxD.shape[-1]
  if d % 2:
    raise ValueError(f"head_dim must be even for RoPE, got {d}")
  inv_freq = rope_frequencies(d, theta)
  angles_BxTxF = positions_BxT.astype(jnp.float32)[..., None] / scale * inv_freq
  cos = jnp.cos(angles_BxTxF)[:, :, None, :]
  sin = jnp.sin(angles_BxTxF)[:, :, None, :]
  x = x_BxTxHxD.astype(jnp.float32)
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxD.dtype)
