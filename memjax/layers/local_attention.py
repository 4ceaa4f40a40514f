"""Chunked local causal attention with a halo, O(N * (chunk + halo)): the backend choice.

The jnp reference and its blocked form live beside the Pallas kernel
(memjax.kernels.local_attention_reference, re-exported here); `backend` picks one of them
or the kernel (memjax.kernels.local_attention).
"""
from __future__ import annotations

import jax

from memjax.kernels.local_attention_reference import (_check, local_attention_blocked,  # noqa: F401
                                                      local_attention_reference, local_mask,
                                                      score_bytes)

BACKENDS = ("auto", "reference", "blocked", "pallas")
# `auto` off GPU: above this many bytes of float32 scores the all-at-once reference leaves
# the CPU's caches (16k tokens, window 512: 32 MiB; its attention took 18x the time of 2k
# tokens for 8x the tokens, blocked 8.0x: BUILD_NOTES.md, HRSA-TRM third session), so the
# blocked path takes over; below it the reference is as fast and runs op for op as before.
BLOCKED_ABOVE_BYTES = 8 << 20


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
