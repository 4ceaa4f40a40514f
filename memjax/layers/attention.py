"""Dense attention: grouped KV heads, a functional KV cache, cross-attention.

Shapes: B batch, T queries, S keys, H query heads, K kv heads, D head dim.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from memjax.layers.norms import RMSNorm
from memjax.layers.rope import apply_rope

NEG_INF = -1e30  # finite so fully-masked rows give zeros, not NaN


@jax.custom_vjp
def softmax(x: jax.Array) -> jax.Array:
  """jax.nn.softmax over the last axis, whose backward takes the row sum sum(y * g) as a
  contraction (einsum), not a reduce: XLA's CPU backend ran that reduce so slowly that the whole
  backward took 3-6x as long (0.27 -> 0.05 ms on THEN's [32,1,1,32,96] scores; BUILD_NOTES
  issue 16). The same values; gradients within float rounding. Reverse mode only."""
  return jax.nn.softmax(x, axis=-1)


def _softmax_fwd(x):
  y = jax.nn.softmax(x, axis=-1)
  return y, y


def _softmax_bwd(y, g):
  return (y * (g - jnp.einsum("...s,...s->...", y, g)[..., None]),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def attend(q_BxTxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
           mask_BxTxS: jax.Array | None = None, *, scale: float | None = None,
           softcap: float | None = None) -> jax.Array:
  """softmax(q k^T * scale) v with H/K query heads sharing each kv head; float32 softmax.
  The values may be wider than the queries and keys (a pointer reading raw embeddings)."""
  b, t, h, d = q_BxTxHxD.shape
  kh = k_BxSxKxD.shape[2]
  if h % kh:
    raise ValueError(f"num_heads {h} is not a multiple of num_kv_heads {kh}")
  scale = d ** -0.5 if scale is None else scale
  q = q_BxTxHxD.reshape(b, t, kh, h // kh, d)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k_BxSxKxD,
                      preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    scores = jnp.tanh(scores / softcap) * softcap
  if mask_BxTxS is not None:
    scores = jnp.where(mask_BxTxS[:, None, None], scores, NEG_INF)
  probs = softmax(scores)
  if mask_BxTxS is not None:  # rows with no visible key attend to nothing
    probs = jnp.where(mask_BxTxS[:, None, None].any(-1, keepdims=True), probs, 0.0)
  out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v_BxSxKxD.dtype), v_BxSxKxD,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, t, h, v_BxSxKxD.shape[-1]).astype(q_BxTxHxD.dtype)


def causal_mask(q_pos_BxT: jax.Array, k_pos_BxS: jax.Array, *,
                window: int | None = None) -> jax.Array:
  """Key s visible to query t iff k_pos <= q_pos (and q_pos - k_pos < window)."""
  diff = q_pos_BxT[:, :, None] - k_pos_BxS[:, None, :]
  mask = diff >= 0
  if window is not None:
    mask &= diff < window
  return mask


@flax.struct.dataclass
class KVCache:
  """Fixed-capacity cache; `length` tokens (the same for every row) are filled."""
  k_BxLxKxD: jax.Array
  v_BxLxKxD: jax.Array
  length: jax.Array  # int32 scalar

  @classmethod
  def init(cls, batch: int, capacity: int, num_kv_heads: int, head_dim: int,
           dtype=jnp.float32) -> KVCache:
    shape = (batch, capacity, num_kv_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


class Attention(nnx.Module):
  """Self-attention with grouped KV heads, optional qkv bias, qk-norm, RoPE and window."""

  def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None,
               head_dim: int | None = None, *, qkv_bias: bool = False, qk_norm: bool = False,
               norm_plus_one: bool = False, norm_eps: float = 1e-6,
               rope_theta: float | None = 10_000.0, scale: float | None = None,
               rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32,
               dot_general=jax.lax.dot_general):
    """dot_general: the projections' (nnx.Linear's), e.g. memjax.layers.dense.dot_general."""
    num_kv_heads = num_kv_heads or num_heads
    head_dim = head_dim or dim // num_heads
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.rope_theta = rope_theta
    self.scale = scale
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, dot_general=dot_general)
    self.q = nnx.Linear(dim, num_heads * head_dim, use_bias=qkv_bias, **kw)
    self.k = nnx.Linear(dim, num_kv_heads * head_dim, use_bias=qkv_bias, **kw)
    self.v = nnx.Linear(dim, num_kv_heads * head_dim, use_bias=qkv_bias, **kw)
    self.o = nnx.Linear(num_heads * head_dim, dim, use_bias=False, **kw)
    if qk_norm:
      self.q_norm = RMSNorm(head_dim, eps=norm_eps, plus_one=norm_plus_one, param_dtype=param_dtype)
      self.k_norm = RMSNorm(head_dim, eps=norm_eps, plus_one=norm_plus_one, param_dtype=param_dtype)
    else:
      self.q_norm = self.k_norm = None

  def qkv(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, rope_theta: float | None = None):
    """Projected (and normed, rotated) q, k, v: BxTxHxD, BxTxKxD, BxTxKxD."""
    b, t, _ = x_BxTxD.shape
    q = self.q(x_BxTxD).reshape(b, t, self.num_heads, self.head_dim)
    k = self.k(x_BxTxD).reshape(b, t, self.num_kv_heads, self.head_dim)
    v = self.v(x_BxTxD).reshape(b, t, self.num_kv_heads, self.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    theta = self.rope_theta if rope_theta is None else rope_theta
    if theta is not None:
      q = apply_rope(q, positions_BxT, theta=theta)
      k = apply_rope(k, positions_BxT, theta=theta)
    return q, k, v

  def out(self, attn_BxTxHxD: jax.Array) -> jax.Array:
    b, t = attn_BxTxHxD.shape[:2]
    return self.o(attn_BxTxHxD.reshape(b, t, self.num_heads * self.head_dim))

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array | None = None, *,
               mask_BxTxS: jax.Array | None = None, cache: KVCache | None = None,
               window: int | None = None, rope_theta: float | None = None):
    """Causal self-attention; with `cache`, appends this step's keys and attends to all.

    Returns (y, cache). Without a cache, `mask_BxTxS` (if given) replaces the causal mask.
    """
    b, t, _ = x_BxTxD.shape
    if positions_BxT is None:
      start = 0 if cache is None else cache.length
      positions_BxT = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
    q, k, v = self.qkv(x_BxTxD, positions_BxT, rope_theta)
    if cache is None:
      if mask_BxTxS is None:
        mask_BxTxS = causal_mask(positions_BxT, positions_BxT, window=window)
      return self.out(attend(q, k, v, mask_BxTxS, scale=self.scale)), None
    kc = jax.lax.dynamic_update_slice_in_dim(cache.k_BxLxKxD, k.astype(cache.k_BxLxKxD.dtype),
                                             cache.length, axis=1)
    vc = jax.lax.dynamic_update_slice_in_dim(cache.v_BxLxKxD, v.astype(cache.v_BxLxKxD.dtype),
                                             cache.length, axis=1)
    cap = kc.shape[1]
    k_pos = jnp.broadcast_to(jnp.arange(cap, dtype=jnp.int32), (b, cap))
    mask = causal_mask(positions_BxT, k_pos, window=window)
    mask &= (k_pos < cache.length + t)[:, None, :]
    if mask_BxTxS is not None:
      mask &= mask_BxTxS
    y = self.out(attend(q, kc, vc, mask, scale=self.scale))
    return y, KVCache(kc, vc, cache.length + t)


class CrossAttention(nnx.Module):
  """Queries from x attend to a context (memory slots, encoder states); no positions."""

  def __init__(self, dim: int, context_dim: int, num_heads: int, head_dim: int | None = None, *,
               rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32,
               dot_general=jax.lax.dot_general):
    head_dim = head_dim or dim // num_heads
    self.num_heads, self.head_dim = num_heads, head_dim
    kw = dict(use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
              dot_general=dot_general)
    self.q = nnx.Linear(dim, num_heads * head_dim, **kw)
    self.k = nnx.Linear(context_dim, num_heads * head_dim, **kw)
    self.v = nnx.Linear(context_dim, num_heads * head_dim, **kw)
    self.o = nnx.Linear(num_heads * head_dim, dim, **kw)

  def __call__(self, x_BxTxD: jax.Array, context_BxSxC: jax.Array,
               mask_BxS: jax.Array | None = None, *, return_probs: bool = False):
    b, t, _ = x_BxTxD.shape
    s = context_BxSxC.shape[1]
    q = self.q(x_BxTxD).reshape(b, t, self.num_heads, self.head_dim)
    k = self.k(context_BxSxC).reshape(b, s, self.num_heads, self.head_dim)
    v = self.v(context_BxSxC).reshape(b, s, self.num_heads, self.head_dim)
    mask = None if mask_BxS is None else jnp.broadcast_to(mask_BxS[:, None, :], (b, t, s))
    y = self.o(attend(q, k, v, mask).reshape(b, t, -1))
    if not return_probs:
      return y
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
    scores = scores * self.head_dim ** -0.5
    if mask is not None:
      scores = jnp.where(mask[:, None], scores, NEG_INF)
    return y, jax.nn.softmax(scores, axis=-1)
