"""Chunked local causal attention with a halo: the jnp reference, the Pallas kernel's oracle.

Query i, in chunk c = i // chunk, sees keys j with c * chunk - halo <= j <= i.
The reference materialises one (chunk x (chunk + halo)) score block per chunk, all at
once; `local_attention_blocked` computes the same blocks a few chunks at a time
(`lax.map`), so its working set does not grow with N. Work is O(N * (chunk + halo)).
Plain jnp, no memjax imports: the kernel beside it (local_attention.py) is tested against
it, and memjax.layers.local_attention dispatches between them.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # as memjax.layers.attention: finite so fully-masked rows give zeros, not NaN


def local_mask(q_len: int, k_len: int, *, chunk: int, halo: int) -> jax.Array:
  """The dense TxS boolean mask that local attention implements (for tests and dense baselines)."""
  i = jnp.arange(q_len)[:, None]
  j = jnp.arange(k_len)[None, :]
  return (j <= i) & (j >= (i // chunk) * chunk - halo)


def _check(q, k, v, chunk, halo):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be BxTxHxD; got ndim {q.ndim}, {k.ndim}, {v.ndim}")
  if k.shape != v.shape:
    raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
  if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
    raise ValueError(f"q {q.shape} and k {k.shape} must share batch, length and head dim")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"num_heads {q.shape[2]} is not a multiple of num_kv_heads {k.shape[2]}")
  if chunk <= 0:
    raise ValueError(f"chunk must be positive, got {chunk}")
  if halo < 0:
    raise ValueError(f"halo must be >= 0, got {halo}")


def _windows(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, chunk: int, halo: int):
  """Chunked queries BxNxCxKxGxD, their key/value windows BxNxSxKxD, and the window mask
  NxCxS (S = chunk * (ceil(halo / chunk) + 1)); N = number of chunks, T padded up to N*C."""
  _check(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, chunk, halo)
  b, t, h, d = q_BxTxHxD.shape
  kh = k_BxTxKxD.shape[2]
  n = -(-t // chunk)
  pad = n * chunk - t
  prev = math.ceil(halo / chunk)
  padf = lambda x, front: jnp.pad(x, ((0, 0), (front, pad), (0, 0), (0, 0)))
  q = padf(q_BxTxHxD, 0).reshape(b, n, chunk, kh, h // kh, d)
  # Keys/values with `prev` chunks of zeros in front, so chunk c's window is a slice.
  kp = padf(k_BxTxKxD, prev * chunk).reshape(b, n + prev, chunk, kh, d)
  vp = padf(v_BxTxKxD, prev * chunk).reshape(b, n + prev, chunk, kh, d)
  win = prev + 1
  idx = jnp.arange(n)[:, None] + jnp.arange(win)[None, :]            # n x win chunk ids
  kw = kp[:, idx].reshape(b, n, win * chunk, kh, d)
  vw = vp[:, idx].reshape(b, n, win * chunk, kh, d)
  qi = jnp.arange(n)[:, None, None] * chunk + jnp.arange(chunk)[None, :, None]       # n x c x 1
  kj = (jnp.arange(n)[:, None, None] - prev) * chunk + jnp.arange(win * chunk)[None, None, :]
  mask = (kj <= qi) & (kj >= (qi // chunk) * chunk - halo) & (kj >= 0)            # n x c x s
  return q, kw, vw, mask


def _attend_chunks(q, kw, vw, mask_NxCxS, scale, dtype):
  """BxNxCxKxGxD queries over their BxNxSxKxD windows -> BxNxCxKxGxD, float32 softmax."""
  scores = jnp.einsum("bnckgd,bnskd->bnkgcs", q, kw, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask_NxCxS[None, :, None, None], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  return jnp.einsum("bnkgcs,bnskd->bnckgd", probs, vw, preferred_element_type=jnp.float32)


def _unchunk(out_BxNxCxKxGxD, like_BxTxHxD):
  b, n, c = out_BxNxCxKxGxD.shape[:3]
  t, h, d = like_BxTxHxD.shape[1:]
  return out_BxNxCxKxGxD.reshape(b, n * c, h, d)[:, :t].astype(like_BxTxHxD.dtype)


def local_attention_reference(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
                              *, chunk: int, halo: int, scale: float | None = None) -> jax.Array:
  """jnp oracle: per chunk, attend to (ceil(halo/chunk) previous chunks + own chunk), masked."""
  q, kw, vw, mask = _windows(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, chunk, halo)
  scale = q_BxTxHxD.shape[-1] ** -0.5 if scale is None else scale
  return _unchunk(_attend_chunks(q, kw, vw, mask, scale, v_BxTxKxD.dtype), q_BxTxHxD)


def local_attention_blocked(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
                            *, chunk: int, halo: int, scale: float | None = None,
                            block_chunks: int = 4) -> jax.Array:
  """The reference's blocks, `block_chunks` chunks at a time: O(1) working set in N.

  The all-at-once reference streams an N x chunk x window score tensor through memory, so
  past the CPU's caches its time per token grows with N although its FLOPs do not. Each map
  step slices its own key/value windows and builds its own mask: nothing of size N x window
  (gathered windows, the N x chunk x window mask) exists outside the loop.
  """
  if block_chunks < 1:
    raise ValueError(f"block_chunks must be >= 1, got {block_chunks}")
  _check(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, chunk, halo)
  b, t, h, d = q_BxTxHxD.shape
  kh = k_BxTxKxD.shape[2]
  bc = block_chunks
  nb = -(-t // (chunk * bc))             # map steps; the last may hold padded chunks
  pad = nb * bc * chunk - t
  prev = math.ceil(halo / chunk)
  win = prev + 1
  padf = lambda x, front: jnp.pad(x, ((0, 0), (front, pad), (0, 0), (0, 0)))
  q = jnp.moveaxis(padf(q_BxTxHxD, 0).reshape(b, nb, bc, chunk, kh, h // kh, d), 1, 0)
  kp = padf(k_BxTxKxD, prev * chunk).reshape(b, nb * bc + prev, chunk, kh, d)
  vp = padf(v_BxTxKxD, prev * chunk).reshape(b, nb * bc + prev, chunk, kh, d)
  scale = d ** -0.5 if scale is None else scale
  idx = jnp.arange(bc)[:, None] + jnp.arange(win)[None, :]           # bc x win chunk ids
  c_ids = jnp.arange(bc)[:, None, None]

  def one(xs):
    i, q_blk = xs
    first = i * bc                                                    # this block's first chunk
    window = lambda x: jax.lax.dynamic_slice_in_dim(x, first, bc + prev, 1)[:, idx].reshape(
        b, bc, win * chunk, kh, d)
    qi = (first + c_ids) * chunk + jnp.arange(chunk)[None, :, None]                 # bc x c x 1
    kj = (first + c_ids - prev) * chunk + jnp.arange(win * chunk)[None, None, :]    # bc x 1 x s
    mask = (kj <= qi) & (kj >= (qi // chunk) * chunk - halo) & (kj >= 0)
    return _attend_chunks(q_blk, window(kp), window(vp), mask, scale, v_BxTxKxD.dtype)

  out = jax.lax.map(one, (jnp.arange(nb), q))                        # nb x B x bc x C x K x G x D
  return _unchunk(jnp.moveaxis(out, 0, 1).reshape(b, nb * bc, *out.shape[3:]), q_BxTxHxD)


def score_bytes(q_BxTxHxD: jax.Array, chunk: int, halo: int) -> int:
  """Bytes of the float32 scores the all-at-once reference materialises."""
  b, t, h, _ = q_BxTxHxD.shape
  return 4 * b * h * (-(-t // chunk)) * chunk * chunk * (math.ceil(halo / chunk) + 1)
