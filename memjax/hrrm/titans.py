"""Titans neural memory: a small MLP whose weights are the memory state.

Per chunk of keys k_t and values v_t (all tokens of a chunk see the same weights,
the chunk-parallel form of Titans):

    surprise  g   = grad_W  sum_t theta_t * ||M_W(k_t) - v_t||^2
    momentum  S  <- beta * S - g              (use_momentum=False: S <- -g)
    forgetting W <- (1 - decay) * W + S       (use_forget=False:   W <- W + S)

theta_t (per token), beta and decay (per chunk and example) are data-dependent:
gates computed by the model around base values eta * alpha, beta, eta_decay.
The chunk loop is a lax.scan with (weights, momentum) in the carry; reading is
M_W(q), no update. Everything here is pure: the state is a pytree.

Shapes: B batch, C tokens per chunk, N chunks, D memory dim, W weights per layer.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TitansState:
  """Follows the memory protocol's defaults (memjax.core.memory): zeroed sets the weights and
  the momentum to zero (a memory that reads 0 for every query), shuffled rolls both across
  the batch."""
  weights: tuple  # per layer: [B, D_in, D_out]
  momentum: tuple  # same shapes as weights


def init_state(weights0: tuple, batch: int) -> TitansState:
  """Every example starts from the same weights M_0 (learned) and zero momentum."""
  w = tuple(jnp.broadcast_to(w0, (batch,) + w0.shape) for w0 in weights0)
  return TitansState(w, tuple(jnp.zeros_like(x) for x in w))


def apply_memory(weights: tuple, k_BxCxD: jax.Array) -> jax.Array:
  """M_W(k): per-example MLP, silu between layers (one layer: a linear memory)."""
  h = k_BxCxD
  for i, w in enumerate(weights):
    h = jnp.einsum("bcd,bde->bce", h, w)
    if i < len(weights) - 1:
      h = jax.nn.silu(h)
  return h


def read(state: TitansState, q_BxCxD: jax.Array) -> jax.Array:
  return apply_memory(state.weights, q_BxCxD)


def associative_loss(weights: tuple, k_BxCxD, v_BxCxD, theta_BxC) -> jax.Array:
  """sum_b sum_t theta_bt ||M_Wb(k_bt) - v_bt||^2; its gradient wrt W_b is example b's surprise."""
  err = apply_memory(weights, k_BxCxD) - v_BxCxD
  return jnp.sum(theta_BxC * jnp.sum(err * err, axis=-1))


def surprise(weights: tuple, k_BxCxD, v_BxCxD, theta_BxC) -> tuple:
  return jax.grad(associative_loss)(weights, k_BxCxD, v_BxCxD, theta_BxC)


def update(state: TitansState, k_BxCxD, v_BxCxD, theta_BxC, beta_B, decay_B, *,
           use_momentum: bool = True, use_forget: bool = True) -> TitansState:
  """One chunk's write: surprise, momentum, forgetting."""
  g = surprise(state.weights, k_BxCxD, v_BxCxD, theta_BxC)
  bshape = lambda x, a: a.reshape((-1,) + (1,) * (x.ndim - 1))
  if use_momentum:
    s = tuple(bshape(m, beta_B) * m - gi for m, gi in zip(state.momentum, g))
  else:
    s = tuple(-gi for gi in g)
  if use_forget:
    w = tuple((1.0 - bshape(wi, decay_B)) * wi + si for wi, si in zip(state.weights, s))
  else:
    w = tuple(wi + si for wi, si in zip(state.weights, s))
  return TitansState(w, s)


def memorize(state: TitansState, k_BxTxD, v_BxTxD, theta_BxT, beta_BxN, decay_BxN, *, chunk: int,
             use_momentum: bool = True, use_forget: bool = True):
  """Writes T = N * chunk tokens chunk by chunk (lax.scan); returns (final state, reads).

  reads_BxTxD[t] = M(k_t) with the weights before t's chunk was written (what a
  query at t would retrieve).
  """
  b, t, d = k_BxTxD.shape
  if t % chunk:
    raise ValueError(f"sequence length {t} is not a multiple of chunk {chunk}")
  n = t // chunk
  split = lambda a: jnp.moveaxis(a.reshape((b, n, chunk) + a.shape[2:]), 1, 0)
  xs = (split(k_BxTxD), split(v_BxTxD), split(theta_BxT),
        jnp.moveaxis(beta_BxN, 1, 0), jnp.moveaxis(decay_BxN, 1, 0))

  def body(state, x):
    k, v, th, be, de = x
    r = read(state, k)
    return update(state, k, v, th, be, de, use_momentum=use_momentum, use_forget=use_forget), r

  state, reads = jax.lax.scan(body, state, xs)
  return state, jnp.moveaxis(reads, 0, 1).reshape(b, t, -1)
