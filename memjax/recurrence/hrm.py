"""HRM core: a slow H module and a fast L module on two timescales.

    for h in range(H):                      # lax.scan
      for l in range(L):                    # lax.scan
        z_L = L_net(z_L + z_H + x)
      z_H = H_net(z_H + z_L)

With `one_step_grad` (HRM's one-step gradient approximation) every step but the
final L update and the final H update runs under stop_gradient: the backward
pass costs one L step and one H step whatever H and L are. Deep supervision
runs several such segments, detaching the carry between them, and sums a loss
per segment; an optional Q-head (adaptive computation time) learns when to halt.

`recurse` is pure over (l_step, h_step, x, z_H, z_L); `HRMCore` is the nnx
module whose blocks provide the two steps. Compile time does not grow with H
or L: both loops are scans with a fixed body.
"""
from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from memjax.core.scan import scan
from memjax.layers import Attention, GatedMLP, RMSNorm, dense


# --------------------------------------------------------------------------- blocks

class MLP(nnx.Module):
  """Two-matrix feed-forward: down(gelu(up(x))) (GPT-2 style)."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
    self.up = dense.Linear(dim, hidden, use_bias=False, rngs=rngs)
    # lax.dot_general, as GatedMLP's down: its input is an activation (memjax.layers.dense).
    self.down = nnx.Linear(hidden, dim, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.gelu(self.up(x), approximate=True))


class Block(nnx.Module):
  """Post-norm transformer block (as in HRM: keeps the recurrent state's scale fixed).

  mlp: "gelu" (two matrices) or "swiglu" (memjax.layers.GatedMLP, three matrices).
  """

  def __init__(self, dim: int, num_heads: int, d_ff: int, *, mlp: str = "gelu",
               rope_theta: float = 10_000.0, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"d_model {dim} is not divisible by num_heads {num_heads}")
    self.attn = Attention(dim, num_heads, rope_theta=rope_theta, rngs=rngs,
                          dot_general=dense.dot_general)
    if mlp == "gelu":
      self.mlp = MLP(dim, d_ff, rngs=rngs)
    elif mlp == "swiglu":
      self.mlp = GatedMLP(dim, d_ff, act="silu", fuse_gate_up=True, rngs=rngs,
                          dot_general=dense.dot_general)
    else:
      raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {mlp!r}")
    self.norm1 = RMSNorm(dim)
    self.norm2 = RMSNorm(dim)

  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS):
    a, _ = self.attn(x_BxTxD, positions_BxT, mask_BxTxS=mask_BxTxS)
    x = self.norm1(x_BxTxD + a)
    return self.norm2(x + self.mlp(x))


class Stack(nnx.Module):
  def __init__(self, num_layers: int, dim: int, num_heads: int, d_ff: int, *, mlp: str,
               rope_theta: float, rngs: nnx.Rngs):
    self.blocks = nnx.List([Block(dim, num_heads, d_ff, mlp=mlp, rope_theta=rope_theta, rngs=rngs)
                            for _ in range(num_layers)])

  def __call__(self, x, positions, mask):
    for blk in self.blocks:
      x = blk(x, positions, mask)
    return x


# --------------------------------------------------------------------------- recursion

def h_cycle(l_step: Callable, h_step: Callable, x, z_H, z_L, L: int, *, unroll: bool = False):
  """L fast steps at fixed z_H, then one slow step."""
  def body(z_L, _):
    return l_step(z_L, z_H, x), None
  z_L, _ = scan(body, z_L, None, length=L, unroll=unroll)
  return h_step(z_H, z_L), z_L


def recurse(l_step: Callable, h_step: Callable, x, z_H, z_L, *, H: int, L: int,
            one_step_grad: bool = True, unroll: bool = False):
  """Runs H slow cycles of L fast steps each; returns (z_H, z_L).

  l_step(z_L, z_H, x) -> z_L and h_step(z_H, z_L) -> z_H are pure. With
  `one_step_grad`, only the last L step and the last H step carry gradients;
  every earlier step sees its inputs (x included) under stop_gradient.
  `unroll` unrolls the scans (a debug switch: same numbers, longer compile).
  """
  if H < 1 or L < 1:
    raise ValueError(f"HRM needs H >= 1 and L >= 1, got H={H}, L={L}")
  if not one_step_grad:
    def body(carry, _):
      return h_cycle(l_step, h_step, x, *carry, L, unroll=unroll), None
    (z_H, z_L), _ = scan(body, (z_H, z_L), None, length=H, unroll=unroll)
    return z_H, z_L

  x_ng = jax.lax.stop_gradient(x)
  z_H, z_L = jax.lax.stop_gradient((z_H, z_L))
  if H > 1:
    def body(carry, _):
      return h_cycle(l_step, h_step, x_ng, *carry, L, unroll=unroll), None
    (z_H, z_L), _ = scan(body, (z_H, z_L), None, length=H - 1,
                                 unroll=unroll)
  if L > 1:
    def lbody(z_L, _):
      return l_step(z_L, z_H, x_ng), None
    z_L, _ = scan(lbody, z_L, None, length=L - 1, unroll=unroll)
  z_H, z_L = jax.lax.stop_gradient((z_H, z_L))
  z_L = l_step(z_L, z_H, x)
  z_H = h_step(z_H, z_L)
  return z_H, z_L


def recurse_reference(l_step, h_step, x, z_H, z_L, *, H: int, L: int, one_step_grad: bool = True,
                      probes=None):
  """Python-loop oracle of `recurse`; `probes[i]` (optional) is added to the state input of step i.

  Steps are numbered in execution order, H * (L + 1) of them; the last two are
  the final L and H updates. Tests read the gradient reaching each step's input
  from the probes.
  """
  n_steps = H * (L + 1)
  probe = (lambda i: probes[i]) if probes is not None else (lambda i: 0.0)
  sg = jax.lax.stop_gradient if one_step_grad else (lambda a: a)
  i = 0
  for h in range(H):
    for l in range(L):
      final = h == H - 1 and l == L - 1
      if final:
        z_H, z_L = sg((z_H, z_L))
      z_L = l_step(z_L + probe(i), z_H, x if final else sg(x))
      i += 1
    z_H = h_step(z_H + probe(i), z_L)
    i += 1
  assert i == n_steps
  return z_H, z_L


# --------------------------------------------------------------------------- module

@flax.struct.dataclass
class HRMCarry:
  z_H_BxTxD: jax.Array
  z_L_BxTxD: jax.Array


class HRMCore(nnx.Module):
  """H and L transformer stacks plus their learned initial states."""

  def __init__(self, dim: int, num_heads: int, d_ff: int, *, h_layers: int, l_layers: int,
               mlp: str = "gelu", rope_theta: float = 10_000.0, rngs: nnx.Rngs):
    kw = dict(mlp=mlp, rope_theta=rope_theta, rngs=rngs)
    self.h_net = Stack(h_layers, dim, num_heads, d_ff, **kw)
    self.l_net = Stack(l_layers, dim, num_heads, d_ff, **kw)
    init = nnx.initializers.truncated_normal(1.0)
    self.z_H_init = nnx.Param(init(rngs.params(), (dim,)))
    self.z_L_init = nnx.Param(init(rngs.params(), (dim,)))
    self.dim = dim

  def init_carry(self, batch: int, length: int) -> HRMCarry:
    shape = (batch, length, self.dim)
    return HRMCarry(jnp.broadcast_to(self.z_H_init[...], shape),
                    jnp.broadcast_to(self.z_L_init[...], shape))

  def __call__(self, x_BxTxD, carry: HRMCarry, *, H: int, L: int, causal: bool = True,
               one_step_grad: bool = True, unroll: bool = False) -> HRMCarry:
    b, t, _ = x_BxTxD.shape
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if causal:
      mask = pos[:, :, None] >= pos[:, None, :]
    else:
      mask = jnp.ones((b, t, t), bool)
    l_step = lambda z_L, z_H, x: self.l_net(z_L + z_H + x, pos, mask)
    h_step = lambda z_H, z_L: self.h_net(z_H + z_L, pos, mask)
    z_H, z_L = recurse(l_step, h_step, x_BxTxD, carry.z_H_BxTxD, carry.z_L_BxTxD, H=H, L=L,
                       one_step_grad=one_step_grad, unroll=unroll)
    return HRMCarry(z_H, z_L)


# --------------------------------------------------------------------------- deep supervision

def deep_supervision(segment_fn: Callable, carry, segments: int):
  """Runs `segments` segments; the carry is detached between them.

  segment_fn(carry) -> (carry, out). Returns (final carry, outs stacked on axis 0).
  The gradient of sum(loss(out_i)) equals the sum of the per-segment gradients
  HRM accumulates with an optimizer step per segment (here one step for all).
  """
  def body(carry, _):
    carry, out = segment_fn(jax.lax.stop_gradient(carry))
    return carry, out
  return jax.lax.scan(body, carry, None, length=segments)


def act_targets(q_halt_SxB, q_cont_SxB, correct_SxB):
  """HRM's Q-learning targets for the halt / continue logits over S segments.

  halt target: the segment's answer is exactly right. continue target: the
  value of the next segment, sigmoid(max(q_halt, q_cont)) there, or its halt
  value at the last segment (the cap).
  """
  nxt_h = q_halt_SxB[1:]
  nxt_c = q_cont_SxB[1:]
  last = jnp.arange(nxt_h.shape[0]) == nxt_h.shape[0] - 1
  nxt = jnp.where(last[:, None], nxt_h, jnp.maximum(nxt_h, nxt_c))
  cont = jax.nn.sigmoid(nxt)
  cont = jnp.concatenate([cont, jnp.zeros_like(cont[:1])], 0)  # at the cap no continue
  return correct_SxB.astype(jnp.float32), jax.lax.stop_gradient(cont)
