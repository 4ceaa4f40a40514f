"""The pretrained decoder: Qwen2 family and Gemma3 text models as one configurable nnx module.

Shapes: B batch, T tokens, D model dim, V vocabulary, L cache capacity.

    model = Decoder(config, rngs=nnx.Rngs(0))
    hidden_BxTxD, _ = model(tokens_BxT)                    # after the final norm
    logits_BxTxV = model.logits(hidden_BxTxD[:, -3:])      # only where a loss needs them
    hidden, cache = model(embeds_BxTxD=soft_BxKxD, cache=model.init_cache(B, 64))
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from memjax.layers import Attention, GatedMLP, KVCache, RMSNorm, attend, causal_mask
from memjax.models.pretrained.config import SLIDING, DecoderConfig

Cache = tuple  # one memjax.layers.KVCache per layer; all share the same `length`


class Block(nnx.Module):
  """One transformer block: Qwen2 pre-norm, or Gemma3 pre+post-norm ("sandwich")."""

  def __init__(self, config: DecoderConfig, index: int, *, rngs: nnx.Rngs, dtype, param_dtype):
    c = config
    self.sliding = c.layer_type(index) == SLIDING
    self.window = c.sliding_window if self.sliding else None
    self.rope_theta = c.rope_local_theta if self.sliding else c.rope_theta
    self.rope_scale = 1.0 if self.sliding else c.rope_scale
    self.attn_scale = c.attn_scale
    self.attn_softcap = c.attn_logit_softcap
    norm = dict(eps=c.norm_eps, plus_one=c.norm_plus_one, param_dtype=param_dtype)
    self.attn_norm = RMSNorm(c.dim, **norm)
    self.attn = Attention(c.dim, c.num_heads, c.num_kv_heads, c.head_dim, qkv_bias=c.qkv_bias,
                          qk_norm=c.qk_norm, norm_plus_one=c.norm_plus_one, norm_eps=c.norm_eps,
                          rope_theta=self.rope_theta, scale=c.attn_scale, rngs=rngs, dtype=dtype,
                          param_dtype=param_dtype)
    self.mlp_norm = RMSNorm(c.dim, **norm)
    self.mlp = GatedMLP(c.dim, c.hidden, act=c.act, rngs=rngs, dtype=dtype,
                        param_dtype=param_dtype)
    if c.post_norms:
      self.attn_post_norm = RMSNorm(c.dim, **norm)
      self.mlp_post_norm = RMSNorm(c.dim, **norm)
    else:
      self.attn_post_norm = self.mlp_post_norm = None

  def attention(self, x_BxTxD, positions_BxT, cache: KVCache | None):
    b, t, _ = x_BxTxD.shape
    rope_pos = positions_BxT if self.rope_scale == 1.0 else positions_BxT / self.rope_scale
    q, k, v = self.attn.qkv(x_BxTxD, rope_pos, self.rope_theta)
    if cache is None:
      mask = causal_mask(positions_BxT, positions_BxT, window=self.window)
      y = attend(q, k, v, mask, scale=self.attn_scale, softcap=self.attn_softcap)
      return self.attn.out(y), None
    # Slot i of the cache holds the token at position i.
    kc = jax.lax.dynamic_update_slice_in_dim(cache.k_BxLxKxD, k.astype(cache.k_BxLxKxD.dtype),
                                             cache.length, axis=1)
    vc = jax.lax.dynamic_update_slice_in_dim(cache.v_BxLxKxD, v.astype(cache.v_BxLxKxD.dtype),
                                             cache.length, axis=1)
    cap = kc.shape[1]
    k_pos = jnp.broadcast_to(jnp.arange(cap, dtype=jnp.int32), (b, cap))
    mask = causal_mask(positions_BxT, k_pos, window=self.window)
    mask &= (k_pos < cache.length + t)[:, None, :]
    y = attend(q, kc.astype(q.dtype), vc.astype(q.dtype), mask, scale=self.attn_scale,
               softcap=self.attn_softcap)
    return self.attn.out(y), KVCache(kc, vc, cache.length + t)

  def __call__(self, x_BxTxD, positions_BxT, cache: KVCache | None = None):
    h, cache = self.attention(self.attn_norm(x_BxTxD), positions_BxT, cache)
    if self.attn_post_norm is not None:
      h = self.attn_post_norm(h)
    x_BxTxD = x_BxTxD + h
    h = self.mlp(self.mlp_norm(x_BxTxD))
    if self.mlp_post_norm is not None:
      h = self.mlp_post_norm(h)
    return x_BxTxD + h, cache


class Decoder(nnx.Module):
  """A decoder-only LM. Call it on token ids or on input embeddings (soft prompts)."""

  def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=None):
    param_dtype = dtype if param_dtype is None else param_dtype
    self.config = config
    self.dtype = dtype
    c = config
    self.embed_tokens = nnx.Embed(c.vocab_size, c.dim, rngs=rngs, dtype=dtype,
                                  param_dtype=param_dtype)
    self.blocks = nnx.List([Block(c, i, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
                            for i in range(c.num_layers)])
    self.final_norm = RMSNorm(c.dim, eps=c.norm_eps, plus_one=c.norm_plus_one,
                              param_dtype=param_dtype)
    if c.tie_embeddings:
      self.lm_head = None
    else:  # stored V x D like the embedding, so logits read both the same way
      init = nnx.initializers.normal(c.dim ** -0.5)
      self.lm_head = nnx.Param(init(rngs.params(), (c.vocab_size, c.dim), param_dtype))

  def embed(self, tokens_BxT: jax.Array) -> jax.Array:
    """Token embeddings as block 0 reads them (Gemma's sqrt(dim) scaling included)."""
    x = self.embed_tokens(tokens_BxT)
    if self.config.embed_scale:  # HF rounds the scale to the weights' dtype first
      x = x * jnp.asarray(self.config.dim ** 0.5, self.embed_tokens.embedding.dtype)
    return x.astype(self.dtype)

  def __call__(self, tokens_BxT: jax.Array | None = None, *,
               embeds_BxTxD: jax.Array | None = None, positions_BxT: jax.Array | None = None,
               cache: Cache | None = None) -> tuple[jax.Array, Cache | None]:
    """(hidden_BxTxD after the final norm, updated cache or None).

    Give exactly one of tokens_BxT and embeds_BxTxD (embeddings as `embed` returns them).
    With a cache, the T new tokens go to slots length..length+T-1 and take those positions
    unless `positions_BxT` says otherwise.
    """
    if (tokens_BxT is None) == (embeds_BxTxD is None):
      raise ValueError("give exactly one of tokens_BxT and embeds_BxTxD")
    x = self.embed(tokens_BxT) if embeds_BxTxD is None else embeds_BxTxD.astype(self.dtype)
    b, t, _ = x.shape
    if positions_BxT is None:
      start = 0 if cache is None else cache[0].length
      positions_BxT = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
    new_cache = []
    for i, block in enumerate(self.blocks):
      x, c = block(x, positions_BxT, None if cache is None else cache[i])
      new_cache.append(c)
    return self.final_norm(x), (None if cache is None else tuple(new_cache))

  def output_embedding(self) -> jax.Array:
    return (self.embed_tokens.embedding if self.lm_head is None else self.lm_head)[...]

  def logits(self, hidden_BxTxD: jax.Array) -> jax.Array:
    """float32 logits for the positions given (final softcapping applied when configured)."""
    w_VxD = self.output_embedding()
    logits = jnp.einsum("...d,vd->...v", hidden_BxTxD.astype(w_VxD.dtype), w_VxD,
                        preferred_element_type=jnp.float32)
    cap = self.config.final_logit_softcap
    if cap:
      logits = jnp.tanh(logits / cap) * cap
    return logits

  def init_cache(self, batch: int, capacity: int, dtype=None) -> Cache:
    """An empty cache of `capacity` slots per layer (prompt + generated tokens)."""
    c = self.config
    dtype = self.dtype if dtype is None else dtype
    return tuple(KVCache.init(batch, capacity, c.num_kv_heads, c.head_dim, dtype)
                 for _ in range(c.num_layers))


def token_log_probs(model: Decoder, hidden_BxTxD: jax.Array, targets_BxT: jax.Array,
                    *, chunk: int | None = None) -> jax.Array:
  """log p(target) at each position, float32 BxT, without keeping BxTxV around when chunked.

  `chunk` splits the T axis (a scan over chunks), so only BxchunkxV logits live at a time.
  """
  def one(h, y):
    lg = model.logits(h)
    return jnp.take_along_axis(jax.nn.log_softmax(lg, -1), y[..., None], -1)[..., 0]
  t = hidden_BxTxD.shape[1]
  if not chunk or chunk >= t:
    return one(hidden_BxTxD, targets_BxT)
  pad = (-t) % chunk
  h = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0)))
  y = jnp.pad(targets_BxT, ((0, 0), (0, pad)))
  n = (t + pad) // chunk
  hs = h.reshape(h.shape[0], n, chunk, -1).swapaxes(0, 1)
  ys = y.reshape(y.shape[0], n, chunk).swapaxes(0, 1)
  _, out = jax.lax.scan(lambda c, xs: (c, one(*xs)), None, (hs, ys))
  return out.swapaxes(0, 1).reshape(h.shape[0], -1)[:, :t]
