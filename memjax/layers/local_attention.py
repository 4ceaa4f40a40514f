"""Chunked local causal attention with a halo, O(N * (chunk + halo)).

Query i, in chunk c = i // chunk, sees keys j with c * chunk - halo <= j <= i.
The jnp reference materialises one (chunk x (chunk + halo)) score block per
chunk; `backend` picks it or the Pallas kernel (memjax.kernels.local_attention).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from memjax.layers.attention import NEG_INF

BACKENDS = ("auto", "reference", "pallas")


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


def local_attention_reference(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
                              *, chunk: int, halo: int, scale: float | None = None) -> jax.Array:
  """jnp oracle: per chunk, attend to (ceil(halo/chunk) previous chunks + own chunk), masked."""
  _check(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, chunk, halo)
  b, t, h, d = q_BxTxHxD.shape
  kh = k_BxTxKxD.shape[2]
  g = h // kh
  scale = d ** -0.5 if scale is None else scale
  n = -(-t // chunk)
  pad = n * chunk - t
  prev = math.ceil(halo / chunk)
  padf = lambda x, front: jnp.pad(x, ((0, 0), (front, pad), (0, 0), (0, 0)))
  q = padf(q_BxTxHxD, 0).reshape(b, n, chunk, kh, g, d)
  # Keys/values with `prev` chunks of zeros in front, so chunk c's window is a slice.
  kp = padf(k_BxTxKxD, prev * chunk).reshape(b, n + prev, chunk, kh, d)
  vp = padf(v_BxTxKxD, prev * chunk).reshape(b, n + prev, chunk, kh, d)
  win = prev + 1
  idx = jnp.arange(n)[:, None] + jnp.arange(win)[None, :]            # n x win chunk ids
  kw = kp[:, idx].reshape(b, n, win * chunk, kh, d)
  vw = vp[:, idx].reshape(b, n, win * chunk, kh, d)
  scores = jnp.einsum("bnckgd,bnskd->bnkgcs", q, kw, preferred_element_type=jnp.float32) * scale
  qi = jnp.arange(n)[:, None, None] * chunk + jnp.arange(chunk)[None, :, None]       # n x c x 1
  kj = (jnp.arange(n)[:, None, None] - prev) * chunk + jnp.arange(win * chunk)[None, None, :]
  mask = (kj <= qi) & (kj >= (qi // chunk) * chunk - halo) & (kj >= 0)            # n x c x s
  scores = jnp.where(mask[None, :, None, None], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxTxKxD.dtype)
  out = jnp.einsum("bnkgcs,bnskd->bnckgd", probs, vw, preferred_element_type=jnp.float32)
  return out.reshape(b, n * chunk, h, d)[:, :t].astype(q_BxTxHxD.dtype)


def local_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array, *,
                    chunk: int, halo: int, scale: float | None = None,
                    backend: str = "auto") -> jax.Array:
  """Chunked local attention; `auto` takes the Pallas kernel on GPU, the reference elsewhere."""
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
  if backend == "auto":
    backend = "pallas" if jax.default_backend() == "gpu" else "reference"
  if backend == "reference":
    return local_attention_reference(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD,
                                     chunk=chunk, halo=halo, scale=scale)
  from memjax.kernels import local_attention as kernel  # pylint: disable=g-import-not-at-top
  return kernel.local_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, chunk=chunk, halo=halo,
                                scale=scale, interpret=jax.default_backend() == "cpu")
