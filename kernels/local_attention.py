"""Pallas GPU kernel for chunked local causal attention with a halo.

Query i, in chunk c = i // chunk, sees keys j with c * chunk - halo <= j <= i
(the semantics of `local_attention_reference` in local_attention_reference.py beside it,
the jnp oracle this kernel is tested against).

Forward: a grid over (batch * heads, query blocks). Each program holds one
block of queries and streams only the key/value blocks that intersect its
window, with an online (flash) softmax in float32; it writes the output and the
log-sum-exp (base 2) that the backward reuses. Work is O(T * (chunk + halo)).

Backward: two Pallas kernels joined to the forward by `jax.custom_vjp`:
  dq:     grid (batch * heads, query blocks), streams the key blocks in the window;
  dk, dv: grid (batch * kv_heads, key blocks), streams, for each query head of the
          kv head's group, the query blocks whose window contains the key block.
The row term delta_i = sum_d o_id * do_id is one fused XLA reduction outside Pallas.

Backend: Pallas' Triton lowering, chosen explicitly with
`compiler_params=plgpu.CompilerParams(...)` (jax 0.10 sends a pallas_call
without compiler params to Mosaic GPU, whose Pallas matmuls are only
`plgpu.wgmma` (sm_90a) and `plgpu.tcgen05_mma` (sm_100a): nothing lowers a
`dot` on consumer Blackwell, sm_120, whereas Triton's `tt.dot` picks mma.sync /
wgmma per architecture). See BUILD_NOTES.md (Pallas section).

Sequence lengths that are not a multiple of the block sizes are padded inside
the call; the padding is exact (padded queries are sliced off, their cotangent
is zero, and a real query never sees a padded key since j <= i < T).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from memjax.kernels.local_attention_reference import local_attention_reference  # noqa: F401  the oracle
import jax.numpy as jnp

# Finite, so a block whose keys are all masked for a row cannot make NaNs
# (every row sees at least itself, so such blocks are later corrected to zero).
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
LOG2E = math.log2(math.e)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)
SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16)


def _is_pow2(n: int) -> bool:
  return n > 0 and (n & (n - 1)) == 0


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes (powers of two, >= 16 so that every tile is a tensor-core dot).

  block_q / block_k: query / key rows per tile in the forward.
  block_q_bwd / block_k_bwd: query / key rows per tile in both backward kernels.
  num_warps: Triton warps per program (None: 4 for head dim <= 64, else 8).
  num_stages: Triton software-pipelining stages of the key/query loops.
  """
  block_q: int = 64
  block_k: int = 64
  block_q_bwd: int = 64
  block_k_bwd: int = 64
  num_warps: int | None = None
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_k", "block_q_bwd", "block_k_bwd"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 16 or not _is_pow2(value):
        raise ValueError(f"BlockSizes.{name} must be a power of two >= 16, got {value!r}")
    if self.num_warps is not None and (self.num_warps <= 0 or not _is_pow2(self.num_warps)):
      raise ValueError(f"BlockSizes.num_warps must be a power of two, got {self.num_warps!r}")
    if self.num_stages < 1:
      raise ValueError(f"BlockSizes.num_stages must be >= 1, got {self.num_stages!r}")


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static (hashable) parameters of one call, after validation and clipping."""
  chunk: int
  halo: int
  scale: float
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int
  t_pad: int
  num_warps: int
  num_stages: int
  interpret: bool
  poison: bool


# --------------------------------------------------------------------------- poisoning

_POISON = threading.local()


@contextlib.contextmanager
def poisoned_outputs():
  """Debug/test aid: every kernel output buffer starts as NaN (aliased in), so an
  element the kernel forgets to write shows up as NaN, on GPU and in interpret mode."""
  previous = getattr(_POISON, "on", False)
  _POISON.on = True
  try:
    yield
  finally:
    _POISON.on = previous


def _pallas_call(kernel, *, grid, in_specs, out_specs, out_shape, cfg: _Config, name: str):
  """pl.pallas_call on the Triton backend; with cfg.poison, outputs alias NaN-filled inputs."""
  params = plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
  if not cfg.poison:
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          out_shape=out_shape, compiler_params=params,
                          interpret=cfg.interpret, name=name)
  n_in, n_out = len(in_specs), len(out_shape)

  def poisoned_kernel(*refs):
    # refs: inputs, the aliased poison inputs (unused: they are the output buffers), outputs.
    kernel(*refs[:n_in], *refs[n_in + n_out:])

  call = pl.pallas_call(poisoned_kernel, grid=grid, in_specs=[*in_specs, *out_specs],
                        out_specs=out_specs, out_shape=out_shape, compiler_params=params,
                        interpret=cfg.interpret, name=name + "_poisoned",
                        input_output_aliases={n_in + i: i for i in range(n_out)})

  def run(*args):
    poison = [jnp.full(s.shape, jnp.nan, s.dtype) for s in out_shape]
    return call(*args, *poison)

  return run


# --------------------------------------------------------------------------- helpers


def _dot(a, b, *, trans_a: bool = False, trans_b: bool = False):
  """2-D matmul with float32 accumulation (lowers to tt.dot on Triton)."""
  dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _window_mask(q_pos, k_pos, chunk: int, halo: int):
  """(len(q_pos), len(k_pos)) bool: key k_pos visible from query q_pos."""
  lo = lax.div(q_pos, chunk) * chunk - halo
  return (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] >= lo[:, None])


def _key_block_range(q_start, cfg: _Config, block_q: int, block_k: int):
  """[lo, hi) key blocks that intersect the windows of queries [q_start, q_start + block_q)."""
  first_key = jnp.maximum(lax.div(q_start, cfg.chunk) * cfg.chunk - cfg.halo, 0)
  lo = lax.div(first_key, block_k)
  hi = lax.div(q_start + block_q + block_k - 1, block_k)
  return lo, hi


def _query_block_range(k_start, cfg: _Config, block_q: int, block_k: int):
  """[lo, hi) query blocks whose windows intersect keys [k_start, k_start + block_k)."""
  lo = lax.div(k_start, block_q)
  # Query i sees key j iff j <= i and chunk_start(i) <= j + halo; the last such i for
  # the block's last key ends the chunk holding that key + halo.
  last_key = k_start + block_k - 1
  end = (lax.div(last_key + cfg.halo, cfg.chunk) + 1) * cfg.chunk
  hi = jnp.minimum(lax.div(end + block_q - 1, block_q), cfg.t_pad // block_q)
  return lo, hi


# --------------------------------------------------------------------------- forward


def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, cfg: _Config):
  bq, bk = cfg.block_q, cfg.block_k
  q_start = pl.program_id(1) * bq
  q = q_ref[...]
  q_pos = q_start + jnp.arange(bq, dtype=jnp.int32)
  qk_scale = cfg.scale * LOG2E

  def body(j, carry):
    acc, m_prev, l_prev = carry
    k_start = j * bk
    k = k_ref[pl.ds(k_start, bk), :]
    v = v_ref[pl.ds(k_start, bk), :]
    s = _dot(q, k, trans_b=True) * qk_scale
    mask = _window_mask(q_pos, k_start + jnp.arange(bk, dtype=jnp.int32), cfg.chunk, cfg.halo)
    s = jnp.where(mask, s, MASK_VALUE)
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))
    correction = jnp.exp2(m_prev - m_next)
    p = jnp.exp2(s - m_next[:, None])
    l_next = l_prev * correction + jnp.sum(p, axis=1)
    acc = acc * correction[:, None] + _dot(p.astype(v.dtype), v)
    return acc, m_next, l_next

  lo, hi = _key_block_range(q_start, cfg, bq, bk)
  init = (jnp.zeros((bq, q.shape[-1]), jnp.float32),
          jnp.full((bq,), -jnp.inf, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  acc, m, l = lax.fori_loop(lo, hi, body, init)
  lse_ref[...] = m + jnp.log2(l)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)


def _forward(q, k, v, cfg: _Config):
  """Padded q, k, v (B x T_pad x H|K x D) -> (out B x T_pad x H x D, lse B x H x T_pad, base 2)."""
  b, t, h, d = q.shape
  kh = k.shape[2]
  g = h // kh
  bq = cfg.block_q
  q_spec = pl.BlockSpec((None, bq, None, d), lambda bh, i: (bh // h, i, bh % h, 0))
  kv_spec = pl.BlockSpec((None, t, None, d), lambda bh, i: (bh // h, 0, (bh % h) // g, 0))
  lse_spec = pl.BlockSpec((None, None, bq), lambda bh, i: (bh // h, bh % h, i))
  return _pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg),
      grid=(b * h, t // bq),
      in_specs=[q_spec, kv_spec, kv_spec],
      out_specs=[q_spec, lse_spec],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, t), jnp.float32)],
      cfg=cfg, name="local_attention_fwd")(q, k, v)


# --------------------------------------------------------------------------- backward


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, cfg: _Config):
  bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
  q_start = pl.program_id(1) * bq
  q = q_ref[...]
  do = do_ref[...]
  lse = lse_ref[...]
  delta = delta_ref[...]
  q_pos = q_start + jnp.arange(bq, dtype=jnp.int32)
  qk_scale = cfg.scale * LOG2E

  def body(j, dq):
    k_start = j * bk
    k = k_ref[pl.ds(k_start, bk), :]
    v = v_ref[pl.ds(k_start, bk), :]
    s = _dot(q, k, trans_b=True) * qk_scale
    mask = _window_mask(q_pos, k_start + jnp.arange(bk, dtype=jnp.int32), cfg.chunk, cfg.halo)
    p = jnp.where(mask, jnp.exp2(s - lse[:, None]), 0.0)
    dp = _dot(do, v, trans_b=True)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k)

  lo, hi = _key_block_range(q_start, cfg, bq, bk)
  dq = lax.fori_loop(lo, hi, body, jnp.zeros((bq, q.shape[-1]), jnp.float32))
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *,
                cfg: _Config, group: int):
  bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
  k_start = pl.program_id(1) * bk
  k = k_ref[...]
  v = v_ref[...]
  k_pos = k_start + jnp.arange(bk, dtype=jnp.int32)
  qk_scale = cfg.scale * LOG2E
  lo, hi = _query_block_range(k_start, cfg, bq, bk)
  dk = jnp.zeros(k.shape, jnp.float32)
  dv = jnp.zeros(v.shape, jnp.float32)
  for gi in range(group):  # the query heads sharing this kv head; static and small

    def body(i, carry, gi=gi):
      dk, dv = carry
      q_start = i * bq
      rows = pl.ds(q_start, bq)
      q = q_ref[rows, gi, :]
      do = do_ref[rows, gi, :]
      lse = lse_ref[gi, rows]
      delta = delta_ref[gi, rows]
      s = _dot(q, k, trans_b=True) * qk_scale
      mask = _window_mask(q_start + jnp.arange(bq, dtype=jnp.int32), k_pos, cfg.chunk, cfg.halo)
      p = jnp.where(mask, jnp.exp2(s - lse[:, None]), 0.0)
      dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
      dp = _dot(do, v, trans_b=True)
      ds = p * (dp - delta[:, None])
      dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True)
      return dk, dv

    dk, dv = lax.fori_loop(lo, hi, body, (dk, dv))
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(q, k, v, out, lse, do, cfg: _Config):
  """Padded inputs -> (dq, dk, dv), padded."""
  b, t, h, d = q.shape
  kh = k.shape[2]
  g = h // kh
  bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
  delta = jnp.einsum("bthd,bthd->bht", out.astype(jnp.float32), do.astype(jnp.float32))

  q_spec = pl.BlockSpec((None, bq, None, d), lambda bh, i: (bh // h, i, bh % h, 0))
  kv_full = pl.BlockSpec((None, t, None, d), lambda bh, i: (bh // h, 0, (bh % h) // g, 0))
  row_spec = pl.BlockSpec((None, None, bq), lambda bh, i: (bh // h, bh % h, i))
  dq = _pallas_call(
      functools.partial(_dq_kernel, cfg=cfg),
      grid=(b * h, t // bq),
      in_specs=[q_spec, kv_full, kv_full, q_spec, row_spec, row_spec],
      out_specs=[q_spec],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)],
      cfg=cfg, name="local_attention_dq")(q, k, v, do, lse, delta)[0]

  # Per kv head: its group of g query heads (contiguous: head = kv_head * g + gi).
  q_group = pl.BlockSpec((None, t, g, d), lambda bk_, j: (bk_ // kh, 0, bk_ % kh, 0))
  kv_spec = pl.BlockSpec((None, bk, None, d), lambda bk_, j: (bk_ // kh, j, bk_ % kh, 0))
  row_group = pl.BlockSpec((None, g, t), lambda bk_, j: (bk_ // kh, bk_ % kh, 0))
  dk, dv = _pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, group=g),
      grid=(b * kh, t // bk),
      in_specs=[q_group, kv_spec, kv_spec, q_group, row_group, row_group],
      out_specs=[kv_spec, kv_spec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)],
      cfg=cfg, name="local_attention_dkv")(q, k, v, do, lse, delta)
  return dq, dk, dv


# --------------------------------------------------------------------------- custom_vjp


def _pad(x, t_pad):
  return jnp.pad(x, ((0, 0), (0, t_pad - x.shape[1]), (0, 0), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, cfg: _Config):
  out, _ = _forward(_pad(q, cfg.t_pad), _pad(k, cfg.t_pad), _pad(v, cfg.t_pad), cfg)
  return out[:, :q.shape[1]]


def _attention_fwd(q, k, v, cfg: _Config):
  out, lse = _forward(_pad(q, cfg.t_pad), _pad(k, cfg.t_pad), _pad(v, cfg.t_pad), cfg)
  return out[:, :q.shape[1]], (q, k, v, out, lse)


def _attention_bwd(cfg: _Config, res, do):
  q, k, v, out, lse = res
  t = q.shape[1]
  dq, dk, dv = _backward(_pad(q, cfg.t_pad), _pad(k, cfg.t_pad), _pad(v, cfg.t_pad),
                         out, lse, _pad(do, cfg.t_pad), cfg)
  return dq[:, :t], dk[:, :t], dv[:, :t]


_attention.defvjp(_attention_fwd, _attention_bwd)


# --------------------------------------------------------------------------- public


def _validate(q, k, v, chunk, halo, scale, block_sizes):
  for name, x in (("q_BxTxHxD", q), ("k_BxTxKxD", k), ("v_BxTxKxD", v)):
    if x.ndim != 4:
      raise ValueError(f"{name} must have 4 dims (batch, time, heads, head_dim), got shape {x.shape}")
    if x.dtype not in SUPPORTED_DTYPES:
      raise ValueError(f"{name} dtype must be float32 or bfloat16, got {x.dtype}")
  if k.shape != v.shape:
    raise ValueError(f"k_BxTxKxD {k.shape} and v_BxTxKxD {v.shape} must have the same shape")
  if q.shape[:2] != k.shape[:2]:
    raise ValueError(f"q_BxTxHxD {q.shape} and k_BxTxKxD {k.shape} must share batch and time")
  if q.shape[3] != k.shape[3]:
    raise ValueError(f"q_BxTxHxD head_dim {q.shape[3]} != k_BxTxKxD head_dim {k.shape[3]}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
  if q.shape[3] not in SUPPORTED_HEAD_DIMS:
    raise ValueError(f"head_dim {q.shape[3]} not supported by the kernel; "
                     f"supported: {SUPPORTED_HEAD_DIMS}")
  if k.shape[2] == 0 or q.shape[2] % k.shape[2]:
    raise ValueError(f"num_heads {q.shape[2]} (q_BxTxHxD) is not a multiple of "
                     f"num_kv_heads {k.shape[2]} (k_BxTxKxD)")
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
    raise ValueError(f"chunk must be a positive int, got {chunk!r}")
  if isinstance(halo, bool) or not isinstance(halo, int) or halo < 0:
    raise ValueError(f"halo must be an int >= 0, got {halo!r}")
  if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
    raise ValueError(f"scale must be a finite float or None, got {scale!r}")
  if not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be a BlockSizes, got {type(block_sizes).__name__}")


def local_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array, *,
                    chunk: int, halo: int, scale: float | None = None,
                    block_sizes: BlockSizes = BlockSizes(), interpret: bool = False) -> jax.Array:
  """Chunked local causal attention with a halo (Pallas, differentiable).

  Args:
    q_BxTxHxD: queries; H a multiple of K (grouped KV heads), D in SUPPORTED_HEAD_DIMS.
    k_BxTxKxD, v_BxTxKxD: keys and values, same dtype as q (float32 or bfloat16).
    chunk: query chunk length; query i sees keys from chunk_start(i) - halo to i.
    halo: keys before the chunk start that the chunk also sees.
    scale: score scale, default D ** -0.5.
    block_sizes: tiles; blocks larger than the (power-of-two rounded) length are clipped.
    interpret: run the Pallas interpreter (CPU, tests).

  Returns:
    B x T x H x D, dtype of q. Accumulation is float32.
  """
  _validate(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, chunk, halo, scale, block_sizes)
  t, d = q_BxTxHxD.shape[1], q_BxTxHxD.shape[3]
  cap = max(16, pl.next_power_of_2(t))
  blocks = [min(getattr(block_sizes, n), cap)
            for n in ("block_q", "block_k", "block_q_bwd", "block_k_bwd")]
  t_pad = -(-t // max(blocks)) * max(blocks)   # powers of two: a multiple of every block
  cfg = _Config(
      chunk=chunk, halo=halo, scale=float(d ** -0.5 if scale is None else scale),
      block_q=blocks[0], block_k=blocks[1], block_q_bwd=blocks[2], block_k_bwd=blocks[3],
      t_pad=t_pad,
      num_warps=block_sizes.num_warps or (4 if d <= 64 else 8),
      num_stages=block_sizes.num_stages,
      interpret=bool(interpret), poison=getattr(_POISON, "on", False))
  return _attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, cfg)
