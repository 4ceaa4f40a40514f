"""HRSA diffusion memory: slots denoised from Gaussian noise, a TRM recursion inside each step.

A cascade of levels M0 -> M1 -> M2 (paper: 256 / 1024 / 2048 slots). Level l starts
from pure noise and runs T denoise steps (`lax.scan`); step t

    x    = read(slots -> encoded input) + cond(slots -> level l-1) + embed(sigma_t)
           (with `local_read`, slot i reads only region i of the input: N / S_l tokens,
            so a slot is written from a known stretch of the input)
    y, z = trm.recurse(net, head, x, y, z)     # z refined n times from (x, y, z), then y from (y, z)
    y    = y + sigma_{t+1} * noise             # re-noise for the next step (sigma_T = 0)

The last y is the level's memory. Each level is conditioned on the finished level above
it. The state returned is a `DiffusionMemory` pytree; nothing lives inside the modules.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from memjax.layers import CrossAttention, GatedMLP, RMSNorm, dense, rms_norm
from memjax.layers.attention import NEG_INF
from memjax.recurrence import trm
from memjax.recurrence.denoise import SCHEDULES, noise_schedule, sigma_embedding  # noqa: F401

@flax.struct.dataclass
class DiffusionMemory:
  """levels[l]: BxS_lxD, the denoised slots of cascade level l (M0 first).

  Follows the memory protocol's defaults (memjax.core.memory): zeroed empties every level,
  shuffled rolls every level across the batch, flat concatenates them."""
  levels: tuple[jax.Array, ...]


def check_cascade(slots: Sequence[int]) -> None:
  """Raises ValueError unless slot counts grow level to level by whole factors."""
  slots = tuple(int(s) for s in slots)
  if not slots or any(s <= 0 for s in slots):
    raise ValueError(f"slots must be positive counts, got {slots}")
  for a, b in zip(slots, slots[1:]):
    if b < a or b % a:
      raise ValueError(f"slots {slots} do not form a cascade: each level must be a whole "
                       f"multiple of the one above ({b} is not a multiple of {a})")


def region_len(n: int, slots: int) -> int:
  """R: the tokens of the input each of `slots` slots reads (the last region PAD-filled)."""
  return -(-n // slots)


def regions(x_BxNx_, slots: int, fill=0):
  """Pads the length N to slots * R (R = region_len(N, slots)) and splits it: BxSxRx..."""
  b, n = x_BxNx_.shape[:2]
  r = region_len(n, slots)
  pad = [(0, 0), (0, slots * r - n)] + [(0, 0)] * (x_BxNx_.ndim - 2)
  return jnp.pad(x_BxNx_, pad, constant_values=fill).reshape(b, slots, r, *x_BxNx_.shape[2:])


class DenoiseLevel(nnx.Module):
  """One cascade level: slot embeddings, the reads, and the TRM net/head of a denoise step."""

  def __init__(self, slots: int, dim: int, heads: int, *, conditioned: bool, local_read: bool,
               rngs: nnx.Rngs):
    self.slots, self.dim, self.heads, self.local_read = slots, dim, heads, local_read
    self.slot_embed = nnx.Param(jax.random.normal(rngs.params(), (slots, dim)) * 0.5)
    self.read_norm = RMSNorm(dim)
    self.read = CrossAttention(dim, dim, heads, rngs=rngs, dot_general=dense.dot_general)
    self.cond_norm = RMSNorm(dim) if conditioned else None
    self.cond = (CrossAttention(dim, dim, heads, rngs=rngs, dot_general=dense.dot_general)
                 if conditioned else None)
    self.sigma_proj = dense.Linear(dim, dim, use_bias=False, rngs=rngs)
    self.net_norm = RMSNorm(dim)
    self.net = GatedMLP(dim, 2 * dim, fuse_gate_up=True, rngs=rngs,
                        dot_general=dense.dot_general)
    self.head_norm = RMSNorm(dim)
    self.head = GatedMLP(dim, 2 * dim, fuse_gate_up=True, rngs=rngs,
                         dot_general=dense.dot_general)

  def read_regions(self, q_BxSxD, enc_BxNxD, enc_mask_BxN):
    """Slot i attends only to region i of the input (N / S tokens): O(N) and slot-addressed.

    Returns (BxSxD, probs BxHxSxR) with R = ceil(N / S); the padded tail is masked out.
    """
    attn = self.read
    b, s, _ = q_BxSxD.shape
    n = enc_BxNxD.shape[1]
    h, hd = attn.num_heads, attn.head_dim
    mask = jnp.ones((b, n), bool) if enc_mask_BxN is None else enc_mask_BxN
    mask_BxSxR = regions(mask, s, fill=False)
    q = attn.q(q_BxSxD).reshape(b, s, h, hd)
    k = regions(attn.k(enc_BxNxD).reshape(b, n, h, hd), s)        # BxSxRxHxD
    v = regions(attn.v(enc_BxNxD).reshape(b, n, h, hd), s)
    scores = jnp.einsum("bshd,bsrhd->bhsr", q, k, preferred_element_type=jnp.float32) * hd ** -0.5
    scores = jnp.where(mask_BxSxR[:, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask_BxSxR[:, None].any(-1, keepdims=True), probs, 0.0)
    out = jnp.einsum("bhsr,bsrhd->bshd", probs.astype(v.dtype), v).reshape(b, s, h * hd)
    return attn.o(out), probs

  def step(self, y_BxSxD, z_BxSxD, sigma, enc_BxNxD, enc_mask_BxN, upper_BxUxD, *,
           n: int, cycles: int, one_step_grad: bool, unroll: bool):
    """One denoise step from noisy slots y: returns (clean estimate y, latent z, read probs)."""
    c_in = jax.lax.rsqrt(1.0 + sigma ** 2).astype(y_BxSxD.dtype)  # sigma stays f32
    q = self.read_norm(y_BxSxD * c_in + self.slot_embed[...])
    if self.local_read:
      read, probs = self.read_regions(q, enc_BxNxD, enc_mask_BxN)
    else:
      read, probs = self.read(q, enc_BxNxD, enc_mask_BxN, return_probs=True)
    x = read
    if self.cond is not None:
      x = x + self.cond(self.cond_norm(q), upper_BxUxD)
    x = x + self.sigma_proj(sigma_embedding(sigma, self.dim).astype(x.dtype))
    net = lambda x, y, z: z + self.net(self.net_norm(x + y + z))
    # The head predicts clean slots from the read plus a refinement of (y, z): the step's
    # noise does not pass straight through, and the slots stay tied to what they read.
    head = lambda y, z: read + self.head(self.head_norm(y + z))
    y, z = trm.recurse(net, head, x, y_BxSxD * c_in, z_BxSxD, n=n, cycles=cycles,
                       one_step_grad=one_step_grad, unroll=unroll)
    return y, z, probs




class DiffusionCascade(nnx.Module):
  """M0 -> M1 -> M2: each level denoised from noise, conditioned on the level above."""

  def __init__(self, slots: Sequence[int], dim: int, heads: int, *, steps: int,
               trm_n: int = 2, trm_cycles: int = 1, one_step_grad: bool = True,
               sigma_max: float = 1.0, schedule: str = "cosine", local_read: bool = True,
               rngs: nnx.Rngs):
    check_cascade(slots)
    noise_schedule(steps, sigma_max, schedule)  # validates
    self.slot_counts = tuple(int(s) for s in slots)
    self.steps, self.trm_n, self.trm_cycles = steps, trm_n, trm_cycles
    self.one_step_grad = one_step_grad
    self.sigma_max, self.schedule = sigma_max, schedule
    self.levels = nnx.List([DenoiseLevel(s, dim, heads, conditioned=i > 0,
                                         local_read=local_read, rngs=rngs)
                            for i, s in enumerate(self.slot_counts)])

  def __call__(self, enc_BxNxD: jax.Array, rng: jax.Array, enc_mask_BxN: jax.Array | None = None,
               *, unroll: bool = False) -> tuple[DiffusionMemory, tuple[jax.Array, ...]]:
    """Returns the memory and, per level, the last step's read probs.

    Read probs are BxHxSxR over each slot's own region (`local_read`, see `regions`) or
    BxHxSxN over the whole input.
    """
    b, _, d = enc_BxNxD.shape
    sigmas = noise_schedule(self.steps, self.sigma_max, self.schedule)
    out, reads, upper = [], [], None
    for li, level in enumerate(self.levels):
      key = jax.random.fold_in(rng, li)
      noise_TxBxSxD = jax.random.normal(key, (self.steps + 1, b, level.slots, d), enc_BxNxD.dtype)
      y0 = (sigmas[0] * noise_TxBxSxD[0]).astype(enc_BxNxD.dtype)
      z0 = jnp.zeros_like(y0)

      def body(carry, xs, level=level, upper=upper):
        y, z = carry
        sigma, sigma_next, noise = xs
        y, z, probs = level.step(y, z, sigma, enc_BxNxD, enc_mask_BxN, upper,
                                 n=self.trm_n, cycles=self.trm_cycles,
                                 one_step_grad=self.one_step_grad, unroll=unroll)
        return (y + (sigma_next * noise).astype(y.dtype), z), probs

      xs = (sigmas[:-1], sigmas[1:], noise_TxBxSxD[1:])
      if unroll:  # debug path: a Python loop, for checking the scan
        carry, probs_list = (y0, z0), []
        for t in range(self.steps):
          carry, p = body(carry, jax.tree.map(lambda a, t=t: a[t], xs))
          probs_list.append(p)
        (y, _), probs = carry, probs_list[-1]
      else:
        (y, _), probs_T = jax.lax.scan(body, (y0, z0), xs)
        probs = probs_T[-1]
      out.append(y)
      reads.append(probs)
      upper = rms_norm(y, jnp.ones((d,), y.dtype), eps=1e-6).astype(y.dtype)
    return DiffusionMemory(tuple(out)), tuple(reads)
