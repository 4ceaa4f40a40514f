"""TRM recursion: one small network refines a latent z from (x, y, z), then the answer y.

    for cycle in range(cycles):          # lax.scan
      for _ in range(n): z = net(x, y, z) # lax.scan
      y = head(y, z)

With `one_step_grad`, every cycle but the last runs under stop_gradient (the
one-step gradient approximation of HRM/TRM): memory and compute of the
backward pass do not grow with `cycles`.

`net` and `head` are pure callables (closures over merged nnx modules or
params); HRRM's Reasoner and HRSA-TRM's denoise step both call this.
"""
from __future__ import annotations

from typing import Callable

import jax

from memjax.core.scan import scan


def latent_steps(net: Callable, x, y, z, n: int, *, unroll: bool = False):
  """z <- net(x, y, z), n times."""
  def body(z, _):
    return net(x, y, z), None
  z, _ = scan(body, z, None, length=n, unroll=unroll)
  return z


def cycle(net: Callable, head: Callable, x, y, z, n: int, *, unroll: bool = False):
  z = latent_steps(net, x, y, z, n, unroll=unroll)
  return head(y, z), z


def recurse(net: Callable, head: Callable, x, y, z, *, n: int, cycles: int,
            one_step_grad: bool = True, unroll: bool = False):
  """Runs `cycles` TRM cycles of `n` latent steps each; returns (y, z)."""
  if n < 1 or cycles < 1:
    raise ValueError(f"TRM needs n >= 1 and cycles >= 1, got n={n}, cycles={cycles}")

  if cycles > 1:
    # Earlier cycles see x detached too, so no gradient reaches the inputs through them.
    x_early = jax.lax.stop_gradient(x) if one_step_grad else x
    carry = jax.lax.stop_gradient((y, z)) if one_step_grad else (y, z)

    def body(carry, _):
      y, z = carry
      return cycle(net, head, x_early, y, z, n, unroll=unroll), None

    (y, z), _ = scan(body, carry, None, length=cycles - 1,
                             unroll=unroll)
    if one_step_grad:
      y, z = jax.lax.stop_gradient((y, z))
  return cycle(net, head, x, y, z, n, unroll=unroll)
