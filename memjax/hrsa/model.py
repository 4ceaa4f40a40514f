"""HRSA-TRM: long input -> O(N) local encoder -> diffusion memory cascade -> decoder.

    doc BxN ─ Encoder (ShiftMix, then chunked local attention, window `chunk` + `halo`) ─> BxNxD
            ─ DiffusionCascade (M0 -> M1 -> M2, T denoise steps, TRM inside) ─> DiffusionMemory
    query BxL ─ Decoder (ShiftMix + causal self-attention, together the last `ctx` tokens,
                         + cross-attention to every memory level) ─> logits BxLxV
    M2 slots  ─ WriteHead ─> each slot's region rebuilt token by token (the write loss)
    query BxL ─ reference Decoder (optional, `lm_reference`: own weights, no memory) ─> logits

The decoder's cross-attention has no biases and reads RMS-normed slots, so an all-zero
memory contributes exactly zero: `decode(memory.zeros_like())` equals
`decode(None)` (the no-memory path). Memory-as-primary is a decoder whose window is
`primary_keep` tokens: it sees only memory plus its last few tokens.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from memjax.core.precision import follow_inputs
from memjax.layers.remat import remat
from memjax.layers import (Attention, CrossAttention, GatedMLP, RMSNorm, attend, blockwise,
                           local_attention, local_mask)
from memjax.layers import dense as dense_lib   # `dense` names the dense-attention switch here
from memjax.hrsa.diffusion import DiffusionCascade, DiffusionMemory


@dataclasses.dataclass(frozen=True)
class HRSAConfig:
  vocab_size: int = 128
  dim: int = 64
  heads: int = 4
  enc_layers: int = 1
  enc_chunk: int = 16
  enc_halo: int = 16
  enc_token_block: int = 2048  # encoder MLP over blocks of this many tokens (0: all at once)
  max_context: int = 32_768
  slots: tuple[int, ...] = (4, 8, 16)
  denoise_steps: int = 2
  trm_n: int = 2
  trm_cycles: int = 1
  one_step_grad: bool = True
  sigma_max: float = 1.0
  schedule: str = "cosine"
  local_read: bool = True   # slot i reads only region i of the input (see memory.diffusion)
  dec_layers: int = 2
  ctx: int = 512
  attention_backend: str = "auto"
  enc_shift: int = 4        # encoder token i also sees tokens i+1..i+3 (a whole 4-token fact)
  dec_shift: int = 3        # decoder token i also sees tokens i-1, i-2 (the query's key pair)
  write_head: bool = True   # reconstruction head: each M2 slot rebuilds its region's tokens
  remat: bool = False       # recompute encoder/decoder blocks in the backward pass
  lm_reference: bool = False  # a no-memory decoder of the same size, its own embedding, trained
                              # on the same batches beside the model (the LM reference)


def sinusoid(positions_N: jax.Array, dim: int) -> jax.Array:
  half = dim // 2
  freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  a = positions_N.astype(jnp.float32)[:, None] * freqs
  return jnp.concatenate([jnp.sin(a), jnp.cos(a)], axis=-1)


class ShiftMix(nnx.Module):
  """x_i + W [x_{i-1}, ..., x_{i-w+1}]: a causal width-w convolution mixing channels.

  One token then carries a short span (a query's key pair in the decoder), so a single
  attention read can pick it up whole; attention alone needs an extra layer to gather it
  first. `ahead=True` (the encoder) mixes in x_{i+1} .. x_{i+w-1} instead: a fact's first
  token carries the whole fact, and no token past the fact carries any of it, so nothing a
  slot could learn to read about a fact lies outside the fact's own region. (A causal
  encoder shift let the read learn to take the token after a fact's value, which carries it
  too; for facts ending on a region's last token that token is in the next region, and
  those facts were missed: EM 0.04 there against 1.00 for every other placement.)
  """

  def __init__(self, dim: int, width: int, rngs: nnx.Rngs, *, ahead: bool = False):
    if width < 1:
      raise ValueError(f"shift width must be >= 1, got {width}")
    self.width, self.ahead = width, ahead
    self.proj = (dense_lib.Linear((width - 1) * dim, dim, use_bias=False, rngs=rngs)
                 if width > 1 else None)

  def __call__(self, x_BxTxD: jax.Array, window_B: jax.Array | None = None) -> jax.Array:
    """`window_B`: per example, only lags below it are mixed in (the decoder's window)."""
    if self.proj is None:
      return x_BxTxD
    lags = self._lags(x_BxTxD, 0.0)
    if window_B is not None:
      lags = [jnp.where((j < window_B)[:, None, None], lag, 0.0)
              for j, lag in enumerate(lags, 1)]
    return x_BxTxD + self.proj(jnp.concatenate(lags, axis=-1))

  def _lags(self, a_BxT, fill):
    """a shifted along its second axis by each lag 1 .. w-1 (back, or ahead), `fill` past the
    edge."""
    t, w = a_BxT.shape[1], self.width
    edge = (0, w - 1) if self.ahead else (w - 1, 0)
    ap = jnp.pad(a_BxT, ((0, 0), edge) + ((0, 0),) * (a_BxT.ndim - 2), constant_values=fill)
    start = (lambda j: j) if self.ahead else (lambda j: w - 1 - j)
    return [ap[:, start(j): start(j) + t] for j in range(1, w)]

  def embedded(self, table_VxD: jax.Array, tokens_BxT: jax.Array, x_BxTxD: jax.Array):
    """self(x) for x = table[tokens] (given, as the embedding returns it), as gathers from the
    per-lag tables table @ W_j: the same values up to summation order, without the
    T x (w-1)D concatenation and its matmul, whose time per token grows past the CPU's caches
    at long inputs (the encoder at 16k tokens, BUILD_NOTES issue 14)."""
    if self.proj is None:
      return x_BxTxD
    v, d = table_VxD.shape
    kernel = self.proj.kernel[...].reshape(self.width - 1, d, d)   # lag j: rows (j-1)d .. jd
    tables = jnp.einsum("vd,jde->jve", table_VxD.astype(x_BxTxD.dtype), kernel)
    tables = jnp.pad(tables, ((0, 0), (0, 1), (0, 0)))      # row v: a lag past either end
    lags = self._lags(tokens_BxT, v)
    return x_BxTxD + sum(tab[ids] for tab, ids in zip(tables, lags))


class EncoderBlock(nnx.Module):
  def __init__(self, cfg: HRSAConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.norm1 = RMSNorm(cfg.dim)
    self.attn = Attention(cfg.dim, cfg.heads, rngs=rngs, dot_general=dense_lib.dot_general)
    self.norm2 = RMSNorm(cfg.dim)
    self.mlp = GatedMLP(cfg.dim, 4 * cfg.dim, fuse_gate_up=True, rngs=rngs,
                        dot_general=dense_lib.dot_general)

  def __call__(self, x_BxNxD, positions_BxN, *, dense: bool = False):
    q, k, v = self.attn.qkv(self.norm1(x_BxNxD), positions_BxN)
    c = self.cfg
    if dense:  # O(N^2) baseline with the same mask (benchmark / tests)
      n = x_BxNxD.shape[1]
      mask = jnp.broadcast_to(local_mask(n, n, chunk=c.enc_chunk, halo=c.enc_halo),
                              (x_BxNxD.shape[0], n, n))
      a = attend(q, k, v, mask)
    else:
      a = local_attention(q, k, v, chunk=c.enc_chunk, halo=c.enc_halo,
                          backend=c.attention_backend)
    x = x_BxNxD + self.attn.out(a)
    # Blocked so that the MLP's hidden layer stays in cache at long inputs (memjax.layers.mlp).
    return x + blockwise(lambda y: self.mlp(self.norm2(y)), x, c.enc_token_block)


class Encoder(nnx.Module):
  """Token + absolute position embedding, then chunked local attention blocks: O(N)."""

  def __init__(self, cfg: HRSAConfig, embed: nnx.Embed, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = embed
    self.shift = ShiftMix(cfg.dim, cfg.enc_shift, rngs, ahead=True)
    self.blocks = nnx.List([EncoderBlock(cfg, rngs) for _ in range(cfg.enc_layers)])
    self.norm = RMSNorm(cfg.dim)

  def __call__(self, doc_BxN: jax.Array, *, dense: bool = False) -> jax.Array:
    b, n = doc_BxN.shape
    if n > self.cfg.max_context:
      raise ValueError(f"context length {n} exceeds the encoder's max_context "
                       f"{self.cfg.max_context}")
    pos = jnp.arange(n, dtype=jnp.int32)
    x = self.shift.embedded(self.embed.embedding[...], doc_BxN, self.embed(doc_BxN))
    x = x + sinusoid(pos, self.cfg.dim)[None].astype(x.dtype)   # no f32 promotion in bf16
    pos_BxN = jnp.broadcast_to(pos, (b, n))
    call = lambda blk, x: blk(x, pos_BxN, dense=dense)
    call = remat(call, self.cfg.remat)
    for blk in self.blocks:
      x = call(blk, x)
    return self.norm(x)


@dataclasses.dataclass(frozen=True)
class DecodeControl:
  """Per-call switches the remedies set (all traced-array friendly)."""
  window_B: jax.Array | None = None      # per-example self-attention window (None: cfg.ctx)
  stop_self_grad: jax.Array | bool = False  # gradient routing: detach self-attention output
  return_probs: bool = False


class DecoderBlock(nnx.Module):
  def __init__(self, cfg: HRSAConfig, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(cfg.dim)
    self.attn = Attention(cfg.dim, cfg.heads, rngs=rngs, dot_general=dense_lib.dot_general)
    self.norm_x = RMSNorm(cfg.dim)
    self.xattn = CrossAttention(cfg.dim, cfg.dim, cfg.heads, rngs=rngs,
                                dot_general=dense_lib.dot_general)
    self.norm2 = RMSNorm(cfg.dim)
    self.mlp = GatedMLP(cfg.dim, 4 * cfg.dim, fuse_gate_up=True, rngs=rngs,
                        dot_general=dense_lib.dot_general)

  def __call__(self, x, mask_BxLxL, memory_BxSxD, stop_self_grad):
    s, _ = self.attn(self.norm1(x), mask_BxTxS=mask_BxLxL)
    s = jnp.where(stop_self_grad, jax.lax.stop_gradient(s), s)
    x = x + s
    probs, m = None, jnp.zeros_like(x)
    if memory_BxSxD is not None:
      m, probs = self.xattn(self.norm_x(x), memory_BxSxD, return_probs=True)
      x = x + m
    x = x + self.mlp(self.norm2(x))
    return x, s, m, probs


class Decoder(nnx.Module):
  def __init__(self, cfg: HRSAConfig, embed: nnx.Embed, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = embed
    self.shift = ShiftMix(cfg.dim, cfg.dec_shift, rngs)
    self.blocks = nnx.List([DecoderBlock(cfg, rngs) for _ in range(cfg.dec_layers)])
    self.mem_norms = nnx.List([RMSNorm(cfg.dim) for _ in cfg.slots])
    self.norm = RMSNorm(cfg.dim)

  def memory_tokens(self, memory: DiffusionMemory) -> jax.Array:
    """BxSxD: all levels, RMS-normed per level (zero slots stay exactly zero)."""
    return jnp.concatenate([n(m) for n, m in zip(self.mem_norms, memory.levels)], axis=1)

  def __call__(self, tokens_BxL: jax.Array, memory: DiffusionMemory | None,
               control: DecodeControl = DecodeControl()):
    b, l = tokens_BxL.shape
    pos = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    window = jnp.full((b,), self.cfg.ctx) if control.window_B is None else control.window_B
    # The window counts the shift's lags: attention spans window - (shift - 1) tokens, so at
    # every layer token i sees exactly tokens i - window + 1 .. i of the layer below.
    attn_window = jnp.maximum(window - (self.shift.width - 1), 1)
    diff = pos[:, :, None] - pos[:, None, :]
    mask = (diff >= 0) & (diff < attn_window[:, None, None])
    mem = None if memory is None else self.memory_tokens(memory)
    x = self.shift(self.embed(tokens_BxL), window)
    selfs, mems, probs = [], [], []
    call = lambda blk, x: blk(x, mask, mem, control.stop_self_grad)
    call = remat(call, self.cfg.remat)
    for blk in self.blocks:
      x, s, m, p = call(blk, x)
      selfs.append(s), mems.append(m), probs.append(p)
    logits = self.embed.attend(self.norm(x))
    aux = {"self_out": selfs, "mem_out": mems, "mem_probs": probs}
    return logits, aux


class WriteHead(nnx.Module):
  """Reads each slot back out as the tokens of its input region, position by position.

  Trained by the write loss (`hrsa_system`): a slot that can rebuild its region in order
  must hold which tokens sit there, facts included, instead of an average of them (a
  bag-of-tokens target let the frequent text tokens crowd the facts out).
  """

  def __init__(self, dim: int, rngs: nnx.Rngs):
    self.dim = dim
    self.pos = dense_lib.Linear(dim, dim, use_bias=False, rngs=rngs)
    self.norm = RMSNorm(dim)
    self.mlp = GatedMLP(dim, 4 * dim, fuse_gate_up=True, rngs=rngs,
                        dot_general=dense_lib.dot_general)
    self.out_norm = RMSNorm(dim)

  def __call__(self, slots_BxSxD: jax.Array, span: int, embed: nnx.Embed) -> jax.Array:
    """BxSxD slots -> BxSxRxV logits for the R = `span` tokens of each slot's region."""
    p = self.pos(sinusoid(jnp.arange(span), self.dim).astype(slots_BxSxD.dtype))
    h = slots_BxSxD[:, :, None, :] + p[None, None]
    h = h + self.mlp(self.norm(h))
    return embed.attend(self.out_norm(h))


class HRSATRM(nnx.Module):
  """Encoder + diffusion memory cascade + decoder, sharing one token embedding."""

  def __init__(self, cfg: HRSAConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.dim, rngs=rngs, promote_dtype=follow_inputs)
    self.encoder = Encoder(cfg, self.embed, rngs)
    self.memory = DiffusionCascade(cfg.slots, cfg.dim, cfg.heads, steps=cfg.denoise_steps,
                                   trm_n=cfg.trm_n, trm_cycles=cfg.trm_cycles,
                                   one_step_grad=cfg.one_step_grad, sigma_max=cfg.sigma_max,
                                   schedule=cfg.schedule, local_read=cfg.local_read,
                                   rngs=rngs)
    self.decoder = Decoder(cfg, self.embed, rngs)
    self.write_head = WriteHead(cfg.dim, rngs) if cfg.write_head else None
    # The LM reference shares nothing with the model (own embedding) and never sees memory:
    # what a decoder of the same size reaches from its local context alone, same batches.
    self.reference = (Decoder(cfg, nnx.Embed(cfg.vocab_size, cfg.dim, rngs=rngs,
                                             promote_dtype=follow_inputs), rngs)
                      if cfg.lm_reference else None)

  def ingest(self, doc_BxN: jax.Array, rng: jax.Array, *, unroll: bool = False):
    """doc -> (DiffusionMemory, per-level read probs BxHxSxN)."""
    return self.memory(self.encoder(doc_BxN), rng, unroll=unroll)

  def __call__(self, doc_BxN, tokens_BxL, rng, control: DecodeControl = DecodeControl()):
    memory, reads = self.ingest(doc_BxN, rng)
    logits, aux = self.decoder(tokens_BxL, memory, control)
    return logits, memory, reads, aux
