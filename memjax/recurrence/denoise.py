"""Denoising from noise over T steps, as one lax.scan: shared by HRSA-TRM's diffusion memory and
DCM's Diffuser.

    sigmas = noise_schedule(T)                      # sigma_max ... 0
    y, carry, aux = denoise(step, noise, sigmas, carry)

with step(y_noisy, carry, sigma) -> (y_clean_estimate, carry, aux). Step t reads
y_t = estimate_{t-1} + sigma_t * noise_t (y_0 = sigma_0 * noise_0), and the last estimate
(sigma_T = 0) is the result. Compile time does not grow with T; `unroll` gives the same
computation as a Python loop (the debug path, and what the tests compare against).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

SCHEDULES = ("cosine", "linear")


def noise_schedule(steps: int, sigma_max: float = 1.0, kind: str = "cosine") -> jax.Array:
  """sigmas[0..T]: sigma_max at t=0 falling to exactly 0 at t=T."""
  if kind not in SCHEDULES:
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
  if steps < 1:
    raise ValueError(f"denoise steps must be >= 1, got {steps}")
  u = jnp.arange(steps + 1, dtype=jnp.float32) / steps
  if kind == "linear":
    return sigma_max * (1.0 - u)
  return sigma_max * jnp.cos(0.5 * math.pi * u)


def sigma_embedding(sigma: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal features of log sigma, length `dim`."""
  half = dim // 2
  freqs = jnp.exp(-math.log(1000.0) * jnp.arange(half, dtype=jnp.float32) / max(half, 1))
  a = jnp.log(sigma + 1e-3) * freqs * 10.0
  return jnp.concatenate([jnp.sin(a), jnp.cos(a)], axis=-1)


def denoise(step: Callable, noise_Tp1x_: jax.Array, sigmas_Tp1: jax.Array, carry=(), *,
            unroll: bool = False):
  """T = len(sigmas) - 1 denoise steps from noise; returns (estimate, carry, last step's aux).

  noise_Tp1x_: T + 1 draws of the state's shape (draw 0 starts, draw t re-noises step t).
  """
  y0 = sigmas_Tp1[0] * noise_Tp1x_[0]
  xs = (sigmas_Tp1[:-1], sigmas_Tp1[1:], noise_Tp1x_[1:])

  def body(state, x):
    y, c = state
    sigma, sigma_next, noise = x
    y, c, aux = step(y, c, sigma)
    return (y + sigma_next * noise, c), aux     # sigma_T = 0: the last estimate is kept as is

  if unroll:
    state, aux = (y0, carry), None
    for t in range(sigmas_Tp1.shape[0] - 1):
      state, aux = body(state, jax.tree.map(lambda a, t=t: a[t], xs))
    return state[0], state[1], aux
  (y, carry), aux_T = jax.lax.scan(body, (y0, carry), xs)
  return y, carry, jax.tree.map(lambda a: a[-1], aux_T)
