"""THEN live memory: local causal attention plus attention over stored traces.

Each segment's tokens attend, in one softmax, to the causal prefix of their own
segment and to the traces (per-layer keys/values) that earlier segments wrote
into a bounded ring buffer. The trace memory is an explicit pytree carried
across segments (TBPTT) and, for contiguous streams, across batches.

  ingest(tokens, state) -> state          write a stream into memory
  query(tokens, state)  -> logits, state  answer from memory (incognito: no write)
"""
from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from memjax.core.precision import follow_inputs
from memjax.layers.remat import remat
from memjax.core import config as cfg
from memjax.layers import (Attention, GatedMLP, RMSNorm, TokenShift, attend, causal_mask,
                           dense)
from memjax.then import traces as traces_lib
from memjax.core import tbptt

WRITE_POLICIES = ("all", "last")


@flax.struct.dataclass
class ThenState:
  traces: traces_lib.TraceMemory
  shift_BxWxD: jax.Array         # token-shift tail: the last inputs of the previous segment


@flax.struct.dataclass
class Window:
  """Traces brought back from the host/disk tiers for one segment (memjax.then.tiers): read in
  the same softmax as the ring buffer (no positions on traces), never written."""
  keys_BxLxRxKxD: jax.Array      # R = retrieved traces (top_k blocks x block)
  values_BxLxRxKxD: jax.Array
  valid_BxR: jax.Array


@dataclasses.dataclass(frozen=True)
class ThenConfig:
  """The THEN model, built from `config.model` (memjax.core.config.typed)."""
  dim: int = 64
  layers: int = 2
  heads: int = 4
  kv_heads: int = 4
  mlp_ratio: int = 2
  shift_width: int = 2
  capacity: int = 64           # traces in the ring buffer
  write: str = "all"           # which of a segment's positions write traces: all, last
  write_last: int = 16
  read_memory: bool = True     # False: the traces are never read (the disconnected control)
  truncate_every: int = 0      # TBPTT: detach the memory every k segments (0: never)
  segment_len: int = 0         # 0: the task's own segment length
  remat: bool = False          # recompute each block in the backward pass (memory for time)


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name="then", **dataclasses.asdict(ThenConfig())))


class HybridTHENAttention(nnx.Module):
  """One softmax over [memory traces | causal segment prefix]; no positions on traces."""

  def __init__(self, dim: int, heads: int, kv_heads: int, *, rngs: nnx.Rngs):
    self.attn = Attention(dim, heads, kv_heads, rope_theta=None, rngs=rngs,
                          dot_general=dense.dot_general)

  def __call__(self, x_BxSxD, mem_k_BxCxKxD, mem_v_BxCxKxD, valid_BxC, *, read: bool = True):
    b, s, _ = x_BxSxD.shape
    pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    q, k, v = self.attn.qkv(x_BxSxD, pos)
    mask = causal_mask(pos, pos)
    keys, values = k, v
    if read:
      keys = jnp.concatenate([mem_k_BxCxKxD.astype(k.dtype), k], 1)
      values = jnp.concatenate([mem_v_BxCxKxD.astype(v.dtype), v], 1)
      mask = jnp.concatenate([jnp.broadcast_to(valid_BxC[:, None, :], (b, s, valid_BxC.shape[1])),
                              mask], -1)
    return self.attn.out(attend(q, keys, values, mask)), k, v


class Block(nnx.Module):
  def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int, *, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(dim)
    self.attn = HybridTHENAttention(dim, heads, kv_heads, rngs=rngs)
    self.norm2 = RMSNorm(dim)
    self.mlp = GatedMLP(dim, hidden, fuse_gate_up=True, rngs=rngs, dot_general=dense.dot_general)

  def __call__(self, x, mem_k, mem_v, valid, *, read: bool):
    h, k, v = self.attn(self.norm1(x), mem_k, mem_v, valid, read=read)
    x = x + h
    return x + self.mlp(self.norm2(x)), k, v


class ThenLM(nnx.Module):
  def __init__(self, vocab: int, m: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, m.dim, rngs=rngs, promote_dtype=follow_inputs)
    self.shift = TokenShift(m.dim, m.shift_width)
    self.blocks = nnx.List([Block(m.dim, m.heads, m.kv_heads, m.mlp_ratio * m.dim, rngs=rngs)
                            for _ in range(m.layers)])
    self.norm = RMSNorm(m.dim)
    self.head = dense.Linear(m.dim, vocab, use_bias=False, rngs=rngs)
    self.remat = m.remat

  def __call__(self, tokens_BxS, state: ThenState, *, read: bool = True,
               window: Window | None = None, head: bool = True):
    """Returns (logits, keys_BxLxSxKxD, values_BxLxSxKxD, shift tail). A `window` of retrieved
    traces is read with the ring buffer, in one softmax. head=False: the final-normed hidden
    states BxSxD in place of the logits (`logits` applies the head)."""
    x, tail = self.shift(self.embed(tokens_BxS), state.shift_BxWxD)
    t = state.traces
    mem_k, mem_v, valid = t.keys_BxLxCxKxD, t.values_BxLxCxKxD, t.valid_BxC
    if window is not None:
      mem_k = jnp.concatenate([mem_k, window.keys_BxLxRxKxD.astype(mem_k.dtype)], 2)
      mem_v = jnp.concatenate([mem_v, window.values_BxLxRxKxD.astype(mem_v.dtype)], 2)
      valid = jnp.concatenate([valid, window.valid_BxR], 1)
    ks, vs = [], []
    call = lambda blk, *a: blk(*a, read=read)
    call = remat(call, self.remat)   # same values; activations recomputed in the backward
    for i, block in enumerate(self.blocks):
      x, k, v = call(block, x, mem_k[:, i], mem_v[:, i], valid)
      ks.append(k)
      vs.append(v)
    h = self.norm(x)
    return (self.head(h) if head else h), jnp.stack(ks, 1), jnp.stack(vs, 1), tail

  def logits(self, h_BxSxD):
    return self.head(h_BxSxD)

  def address(self, tokens_BxT, shift_BxWxD):
    """The first layer's queries BxTxHxD: they depend on the tokens and the shift tail only
    (not on the memory), so a whole stream's can be computed before any segment runs."""
    x, _ = self.shift(self.embed(tokens_BxT), shift_BxWxD)
    b, t = tokens_BxT.shape
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    blk = self.blocks[0]
    return blk.attn.attn.qkv(blk.norm1(x), pos)[0]


def validate(config) -> None:
  m = cfg.typed(ThenConfig, config.model)
  cfg.positive(config, "model.dim", "model.layers", "model.heads", "model.kv_heads",
               "model.mlp_ratio", "model.shift_width", "model.capacity")
  cfg.non_negative(config, "model.truncate_every")
  cfg.one_of(config, "model.write", WRITE_POLICIES)
  cfg.require(m.dim % m.heads == 0, "model.dim", f"{m.dim} is not divisible by model.heads={m.heads}")
  cfg.require(m.heads % m.kv_heads == 0, "model.heads",
              f"{m.heads} is not a multiple of model.kv_heads={m.kv_heads}")
  cfg.non_negative(config, "model.segment_len")
  total = config.task.segment_len * config.task.num_segments
  if m.segment_len:
    cfg.require(total % m.segment_len == 0, "model.segment_len",
                f"{m.segment_len} does not divide the sequence length {total}")
    cfg.require(config.task.segment_len % m.segment_len == 0, "model.segment_len",
                f"{m.segment_len} does not divide task.segment_len={config.task.segment_len}")
  if m.write == "last":
    cfg.positive(config, "model.write_last")
    cfg.require(m.write_last <= config.task.segment_len, "model.write_last",
                f"{m.write_last} exceeds task.segment_len={config.task.segment_len}")


class ThenModel:
  """The THEN model's pure functions over (params, segment, state)."""

  def __init__(self, config, vocab_size: int, segment_len: int):
    self.m = cfg.typed(ThenConfig, config.model)
    self.vocab_size = vocab_size
    self.segment_len = segment_len
    model = nnx.eval_shape(lambda: ThenLM(vocab_size, self.m, rngs=nnx.Rngs(0)))
    self.graphdef, _ = nnx.split(model, nnx.Param)

  def init_params(self, rng):
    return nnx.split(ThenLM(self.vocab_size, self.m, rngs=nnx.Rngs(rng)), nnx.Param)[1]

  def init_state(self, batch: int) -> ThenState:
    m = self.m
    return ThenState(traces_lib.init(batch, m.layers, m.capacity, m.kv_heads, m.dim // m.heads),
                     jnp.zeros((batch, m.shift_width - 1, m.dim), jnp.float32))

  def segment(self, params, state: ThenState, tokens_BxS, *, write_B=None, head: bool = True):
    """One segment: read the traces, then write this segment's traces. -> (logits, state);
    head=False: (final hidden states, state)."""
    model = nnx.merge(self.graphdef, params)
    logits, k, v, tail = model(tokens_BxS, state, read=self.m.read_memory, head=head)
    if self.m.write == "last":
      k, v = k[:, :, -self.m.write_last:], v[:, :, -self.m.write_last:]
    traces = traces_lib.write(state.traces, k, v, write_B)
    return logits, ThenState(traces, tail)

  def run(self, params, state: ThenState, tokens_BxT, *, truncate_every: int = 0,
          unroll: bool | None = None, head: bool = True):
    """All segments of BxT tokens through the memory -> (logits BxTxV, state). `unroll`:
    tbptt.run_segments' (None: unrolled up to UNROLL_UP_TO segments, else a scan).
    head=False: the final hidden states BxTxD in place of the logits (`logits` applies it)."""
    segs = tbptt.split_segments(tokens_BxT, self.segment_len)

    def apply(state, seg):
      logits, state = self.segment(params, state, seg, head=head)
      return state, logits

    state, logits = tbptt.run_segments(apply, state, segs, truncate_every=truncate_every,
                                       unroll=unroll)
    return tbptt.merge_segments(logits), state

  def logits(self, params, h_BxSxD):
    """The LM head over final hidden states (run / segment with head=False)."""
    return nnx.merge(self.graphdef, params).logits(h_BxSxD)

  def ingest(self, params, state, tokens_BxT):
    return self.run(params, state, tokens_BxT)[1]

  # Tiered memory (memjax.then.tiers): the device part, pure; the host part is outside jit.

  @property
  def writes_per_segment(self) -> int:
    return self.m.write_last if self.m.write == "last" else self.segment_len

  def step(self, params, state: ThenState, window: Window | None, tokens_BxS):
    """One segment over L1 (the ring buffer) plus a retrieved window -> (logits, state, evicted).
    `evicted` = (keys_BxLxNxKxD, values, valid_BxN): the L1 traces this segment's write
    overwrites, oldest first (N = traces this segment writes), for the host tiers."""
    s, c = tokens_BxS.shape[1], self.m.capacity
    n = min(s, self.m.write_last) if self.m.write == "last" else s   # a short last segment: fewer
    assert n <= c, f"a segment writes {n} traces, more than the ring buffer's {c}"
    model = nnx.merge(self.graphdef, params)
    t = state.traces
    slots_BxN = (t.cursor_B[:, None] + jnp.arange(n)) % c
    take = lambda a: jnp.take_along_axis(a, slots_BxN[:, None, :, None, None], 2)
    evicted = (take(t.keys_BxLxCxKxD), take(t.values_BxLxCxKxD),
               jnp.take_along_axis(t.valid_BxC, slots_BxN, 1))
    logits, k, v, tail = model(tokens_BxS, state, read=self.m.read_memory, window=window)
    if self.m.write == "last":
      k, v = k[:, :, -n:], v[:, :, -n:]
    return logits, ThenState(traces_lib.write(t, k, v), tail), evicted

  def ingest_chunk(self, params, state: ThenState, tokens_BxT):
    """Many segments in one scan, reading L1 only -> (state, evicted stacked on a leading
    segment axis). Equal to `step` with every retrieval for models whose traces do not depend on
    what they read (one layer: layer 0's keys/values come from the tokens and the shift)."""
    segs = tbptt.split_segments(tokens_BxT, self.segment_len)

    def body(state, seg):
      _, state, evicted = self.step(params, state, None, seg)
      return state, evicted

    return jax.lax.scan(body, state, segs)

  def address(self, params, shift_BxWxD, tokens_BxT):
    return nnx.merge(self.graphdef, params).address(tokens_BxT, shift_BxWxD)

  def query(self, params, state, tokens_BxS, *, incognito: bool = False):
    """-> (logits, state). Incognito answers from the state and returns it unchanged, whole
    (traces, cursor and token-shift tail): the query leaves no trace."""
    logits, new = self.segment(params, state, tokens_BxS)
    return logits, (state if incognito else new)


def flops_per_token(m, vocab_size: int, segment_len: int, head_fraction: float = 1.0) -> float:
  """Model FLOPs per trained token (forward + backward = 3x forward), counting matmuls
  and the attention the model computes: C traces plus the S-token segment per query. The
  LM head counts on `head_fraction` of the tokens: the training loss applies it only where a
  position can be scored (system.py; the last of 3 segments in the recall task)."""
  d, h = m.dim, m.mlp_ratio * m.dim
  kv = m.kv_heads * (m.dim // m.heads)
  proj = 2 * (2 * d * d + 2 * d * kv + 3 * d * h)
  attn = 2 * 2 * d * (m.capacity + segment_len)
  return 3.0 * (m.layers * (proj + attn) + head_fraction * 2 * d * vocab_size)
