"""Memory as context (Titans MAC): a transformer whose attention window is one chunk,
with the neural memory's retrieval and persistent tokens prepended to it.

For each chunk of C tokens (a scan over chunks, unrolled up to
memjax.core.scan.UNROLL_UP_TO of them; the memory state in the carry):

    h   = W_o M(q(x))                      retrieval, one memory token per chunk position
    y   = blocks([persistent | h | x])     attention sees P + C + C tokens, nothing older
    M  <- update(M, k(y), v(y))            Titans write (memjax.hrrm.titans)
    logits = head(y)

Memory token j is visible to chunk token i iff j <= i (no look-ahead). Anything
before the current chunk reaches it only through M.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from memjax.core import scan as scan_lib
from memjax.core.precision import follow_inputs
from memjax.layers import RMSNorm, dense
from memjax.hrrm import titans
from memjax.recurrence.hrm import Stack


def _l2norm(x):
  return x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-6)


def causal_conv(x_BxCxD, w_KxD):
  """Depthwise causal 1D convolution along the chunk (zero history): out[t] = sum_j w[j] x[t-K+1+j]."""
  k = w_KxD.shape[0]
  xp = jnp.pad(x_BxCxD, ((0, 0), (k - 1, 0), (0, 0)))
  c = x_BxCxD.shape[1]
  return sum(w_KxD[j] * xp[:, j:j + c] for j in range(k))


def _logit(p: float) -> float:
  return math.log(p) - math.log1p(-p)


class MACLM(nnx.Module):
  """Causal LM with Titans memory as context. See the module docstring.

  mem_tokens: persistent (learned, input-independent) tokens; mem_slots: hidden
  width of the memory MLP (mem_depth layers of mem_dim -> mem_slots -> mem_dim).
  Gates: theta_t = eta * alpha * 2 sigmoid(g_t) per token, beta and decay per
  chunk as sigmoid(logit(base) + g); gates start at their base values. As in Titans, q, k
  and v pass a depthwise causal convolution of `conv` taps (identity at init; 1: none).
  """

  def __init__(self, *, vocab_size: int, d_model: int, num_layers: int, num_heads: int,
               d_ff: int, chunk: int, mem_dim: int, mem_slots: int, mem_tokens: int,
               mem_depth: int = 2, alpha: float = 1.0, beta: float = 0.9, eta: float = 0.01,
               eta_decay: float = 0.001, momentum: bool = True, forget: bool = True,
               conv: int = 4, mlp: str = "gelu", rope_theta: float = 10_000.0, rngs: nnx.Rngs):
    if d_model % num_heads:
      raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
    self.chunk, self.mem_tokens = chunk, mem_tokens
    self.alpha, self.beta, self.eta, self.eta_decay = alpha, beta, eta, eta_decay
    self.momentum, self.forget = momentum, forget
    self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs, promote_dtype=follow_inputs)
    init = nnx.initializers.normal(0.02)
    self.persistent = nnx.Param(init(rngs.params(), (mem_tokens, d_model)))
    self.blocks = Stack(num_layers, d_model, num_heads, d_ff, mlp=mlp, rope_theta=rope_theta,
                        rngs=rngs)
    kw = dict(use_bias=False, rngs=rngs)
    self.mem_q = dense.Linear(d_model, mem_dim, **kw)
    self.mem_k = dense.Linear(d_model, mem_dim, **kw)
    self.mem_v = dense.Linear(d_model, mem_dim, **kw)
    self.mem_o = dense.Linear(mem_dim, d_model, **kw)
    # Titans: a depthwise causal convolution after the q, k, v projections (kernel `conv`).
    ident = lambda: nnx.Param(jnp.zeros((conv, mem_dim)).at[-1].set(1.0)) if conv > 1 else None
    self.conv_q, self.conv_k, self.conv_v = ident(), ident(), ident()
    self.gates = dense.Linear(d_model, 3, kernel_init=nnx.initializers.zeros,
                              bias_init=nnx.initializers.zeros, rngs=rngs)
    dims = [mem_dim] + [mem_slots] * (mem_depth - 1) + [mem_dim]
    self.mem_init = nnx.List([nnx.Param(nnx.initializers.lecun_normal()(
        rngs.params(), (a, b))) for a, b in zip(dims[:-1], dims[1:])])
    self.norm = RMSNorm(d_model)

  # -- memory state
  def init_memory(self, batch: int) -> titans.TitansState:
    return titans.init_state(tuple(w[...] for w in self.mem_init), batch)

  def _gates(self, y_BxCxD):
    g = self.gates(y_BxCxD)                                        # BxCx3
    theta = self.eta * self.alpha * 2.0 * jax.nn.sigmoid(g[..., 0])
    gc = g[..., 1:].mean(1)                                        # per chunk
    beta = jax.nn.sigmoid(_logit(self.beta) + gc[:, 0]) if 0 < self.beta < 1 else \
        jnp.full(gc.shape[:1], self.beta)
    decay = jax.nn.sigmoid(_logit(self.eta_decay) + gc[:, 1]) if 0 < self.eta_decay < 1 else \
        jnp.full(gc.shape[:1], self.eta_decay)
    return theta, beta, decay

  def _conv(self, w, x):
    return x if w is None else causal_conv(x, w[...])

  # -- one chunk
  def chunk_step(self, state: titans.TitansState, tokens_BxC, start, *, write: bool = True):
    b, c = tokens_BxC.shape
    p = self.mem_tokens
    x = self.embed(tokens_BxC)
    h = self.mem_o(titans.read(state, _l2norm(self._conv(self.conv_q, self.mem_q(x)))))
    pers = jnp.broadcast_to(self.persistent[...], (b, p, x.shape[-1]))
    seq = jnp.concatenate([pers, h, x], axis=1)
    i = jnp.arange(c)
    pos = jnp.concatenate([jnp.zeros((p,), jnp.int32), i, i]) + start
    pos = jnp.broadcast_to(pos, (b, p + 2 * c))
    kind = jnp.concatenate([jnp.zeros((p,), jnp.int32), jnp.ones((c,), jnp.int32),
                            2 * jnp.ones((c,), jnp.int32)])
    idx = jnp.concatenate([jnp.zeros((p,), jnp.int32), i, i])
    # persistent: visible to all; memory token j and chunk token j: visible to queries at >= j
    vis = (kind[None, :] == 0) | ((kind[:, None] > 0) & (idx[None, :] <= idx[:, None]))
    vis = vis & ~((kind[:, None] == 1) & (kind[None, :] == 2))    # memory tokens do not read x
    mask = jnp.broadcast_to(vis, (b,) + vis.shape)
    y = self.blocks(seq, pos, mask)[:, p + c:]
    if write:
      theta, beta, decay = self._gates(y)
      k = _l2norm(self._conv(self.conv_k, self.mem_k(y)))
      v = self._conv(self.conv_v, self.mem_v(y))
      state = titans.update(state, k, v, theta, beta, decay,
                            use_momentum=self.momentum, use_forget=self.forget)
    return self.embed.attend(self.norm(y)), state

  def __call__(self, tokens_BxT, state: titans.TitansState, *, unroll: bool | None = None):
    """Returns (logits BxTxV, state after the last chunk). `unroll`: None unrolls up to
    UNROLL_UP_TO chunks and scans longer sequences; True / False force either (same numbers)."""
    b, t = tokens_BxT.shape
    if t % self.chunk:
      raise ValueError(f"sequence length {t} is not a multiple of chunk {self.chunk}")
    n = t // self.chunk
    chunks = jnp.moveaxis(tokens_BxT.reshape(b, n, self.chunk), 1, 0)

    def body(state, xs):
      tok, j = xs
      logits, state = self.chunk_step(state, tok, j * self.chunk)
      return state, logits

    # Unrolled when short, like TBPTT's segments: the scanned backward slices and copies its
    # saved activations per chunk (BUILD_NOTES issue 16); longer sequences stay a scan.
    if unroll is None:
      unroll = n <= scan_lib.UNROLL_UP_TO
    state, logits = scan_lib.scan(body, state, (chunks, jnp.arange(n)), unroll=unroll)
    return jnp.moveaxis(logits, 0, 1).reshape(b, t, -1), state
