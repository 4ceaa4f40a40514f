"""Chunked local causal attention with a halo, O(N * (chunk + halo)).

Query i, in chunk c = i // chunk, sees keys j with c * chunk - halo <= j <= i.
The jnp reference materialises one (chunk x (chunk + halo)) score block per
chunk, all at once; `local_attention_blocked` computes the same blocks a few
chunks at a time (`lax.map`), so its working set does not grow with N; `backend`
picks one of them or the Pallas kernel (memjax.kernels.local_attention).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from memjax.layers.attention import NEG_INF

BACKENDS = ("auto", "reference", "blocked", "pallas")
# `auto` off GPU: above this many bytes of float32 scores the all-at-once reference leaves
# the CPU's caches (16k tokens, window 512: 32 MiB; its attention took 18x the time of 2k
# tokens for 8x the tokens, blocked 8.0x: BUILD_NOTES.md, HRSA-TRM third session), so the
# blocked path takes over; below it the reference is as fast and runs op for op as before.
BLOCKED_ABOVE_BYTES = 8 << 20


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
  past the CPU's caches its time per token grows with N although its FLOPs do not.
  """
  if block_chunks < 1:
    raise ValueError(f"block_chunks must be >= 1, got {block_chunks}")
  q, kw, vw, mask = _windows(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, chunk, halo)
  scale = q_BxTxHxD.shape[-1] ** -0.5 if scale is None else scale
  front = lambda x: jnp.moveaxis(x, 1, 0)[:, :, None]          # one chunk per map step
  one = lambda xs: _attend_chunks(*xs, scale, v_BxTxKxD.dtype)
  out = jax.lax.map(one, (front(q), front(kw), front(vw), mask[:, None]),
                    batch_size=block_chunks)                       # NxBx1xCxKxGxD
  return _unchunk(jnp.moveaxis(out[:, :, 0], 0, 1), q_BxTxHxD)


def score_bytes(q_BxTxHxD: jax.Array, chunk: int, halo: int) -> int:
  """Bytes of the float32 scores the all-at-once reference materialises."""
  b, t, h, _ = q_BxTxHxD.shape
  return 4 * b * h * (-(-t // chunk)) * chunk * chunk * (math.ceil(halo / chunk) + 1)


def local_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array, *,
                    chunk: int, halo: int, scale: float | None = None,
                    backend: str = "auto") -> jax.Array:
  """Chunked local attention; `auto` takes the Pallas kernel on GPU, else the reference, or
  the blocked reference once the scores would exceed BLOCKED_ABOVE_BYTES."""
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
  if backend == "auto":
    _check(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, chunk, halo)
    backend = choose_backend(q_BxTxHxD, chunk, halo)
  if backend == "reference":
    return local_attention_reference(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD,
                                     chunk=chunk, halo=halo, scale=scale)
  if backend == "blocked":
    return local_attention_blocked(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD,
                                   chunk=chunk, halo=halo, scale=scale)
  from memjax.kernels import local_attention as kernel  # pylint: disable=g-import-not-at-top
  return kernel.local_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, chunk=chunk, halo=halo,
                                scale=scale, interpret=jax.default_backend() == "cpu")


def choose_backend(q_BxTxHxD: jax.Array, chunk: int, halo: int) -> str:
  """What `auto` runs for these shapes on the current default backend."""
  if jax.default_backend() == "gpu":
    return "pallas"
  return "blocked" if score_bytes(q_BxTxHxD, chunk, halo) > BLOCKED_ABOVE_BYTES else "reference"
