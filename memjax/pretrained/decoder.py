"""The pretrained decoder: Qwen2 family and Gemma3 text models as one configurable nnx module.

Shapes: B batch, T tokens, D model dim, V vocabulary, L cache capacity.

    model = Decoder(config, rngs=nnx.Rngs(0))
    hidden_BxTxD, _ = model(tokens_BxT)                    # after the final norm
    logits_BxTxV = model.logits(hidden_BxTxD[:, -3:])      # only where a loss needs them
    hidden, cache = model(embeds_BxTxD=soft_BxKxD, cache=model.init_cache(B, 64))

Call it under jit (nnx.jit, or jax.jit over nnx.split/merge): eagerly, the scan over layers is
traced again on every call.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from memjax.layers import Attention, GatedMLP, KVCache, RMSNorm, attend, causal_mask
from memjax.pretrained.config import SLIDING
from memjax.pretrained.config import DecoderConfig

FULL_WINDOW = 1 << 30  # the window of a global layer: longer than any sequence


class Block(nnx.Module):
  """One transformer block: Qwen2 pre-norm, or Gemma3 pre+post-norm ("sandwich").

  Per-layer differences (sliding window, RoPE base and scale) are arguments, not attributes,
  so all blocks share one structure and the decoder scans over their stacked parameters.
  """

  def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
    c = config
    self.attn_scale = c.attn_scale
    self.attn_softcap = c.attn_logit_softcap
    norm = dict(eps=c.norm_eps, plus_one=c.norm_plus_one, param_dtype=param_dtype)
    self.attn_norm = RMSNorm(c.dim, **norm)
    self.attn = Attention(c.dim, c.num_heads, c.num_kv_heads, c.head_dim, qkv_bias=c.qkv_bias,
                          qk_norm=c.qk_norm, norm_plus_one=c.norm_plus_one, norm_eps=c.norm_eps,
                          rope_theta=c.rope_theta, scale=c.attn_scale, rngs=rngs, dtype=dtype,
                          param_dtype=param_dtype)
    self.mlp_norm = RMSNorm(c.dim, **norm)
    self.mlp = GatedMLP(c.dim, c.hidden, act=c.act, rngs=rngs, dtype=dtype,
                        param_dtype=param_dtype)
    if c.post_norms:
      self.attn_post_norm = RMSNorm(c.dim, **norm)
      self.mlp_post_norm = RMSNorm(c.dim, **norm)
    else:
      self.attn_post_norm = self.mlp_post_norm = None

  def attention(self, x_BxTxD, positions_BxT, window, theta, rope_scale, cache):
    """cache: None, or (k_BxLxKxD, v_BxLxKxD, length) of this layer; returns (y, (k, v))."""
    b, t, _ = x_BxTxD.shape
    q, k, v = self.attn.qkv(x_BxTxD, positions_BxT / rope_scale, theta)
    if cache is None:
      mask = causal_mask(positions_BxT, positions_BxT, window=window)
      y = attend(q, k, v, mask, scale=self.attn_scale, softcap=self.attn_softcap)
      return self.attn.out(y), None
    # Slot i of the cache holds the token at position i.
    kc, vc, length = cache
    kc = jax.lax.dynamic_update_slice_in_dim(kc, k.astype(kc.dtype), length, axis=1)
    vc = jax.lax.dynamic_update_slice_in_dim(vc, v.astype(vc.dtype), length, axis=1)
    cap = kc.shape[1]
    k_pos = jnp.broadcast_to(jnp.arange(cap, dtype=jnp.int32), (b, cap))
    mask = causal_mask(positions_BxT, k_pos, window=window)
    mask &= (k_pos < length + t)[:, None, :]
    y = attend(q, kc.astype(q.dtype), vc.astype(q.dtype), mask, scale=self.attn_scale,
               softcap=self.attn_softcap)
    return self.attn.out(y), (kc, vc)

  def __call__(self, x_BxTxD, positions_BxT, window, theta, rope_scale, cache=None):
    h, kv = self.attention(self.attn_norm(x_BxTxD), positions_BxT, window, theta, rope_scale,
                           cache)
    if self.attn_post_norm is not None:
      h = self.attn_post_norm(h)
    x_BxTxD = x_BxTxD + h
    h = self.mlp(self.mlp_norm(x_BxTxD))
    if self.mlp_post_norm is not None:
      h = self.mlp_post_norm(h)
    return x_BxTxD + h, kv


class Decoder(nnx.Module):
  """A decoder-only LM. Call it on token ids or on input embeddings (soft prompts).

  The blocks' parameters are stacked along a leading layer axis and the forward pass is a
  lax.scan over layers, so compile time does not grow with depth. The KV cache is one
  memjax.layers.KVCache whose k/v carry that layer axis first: k_NxBxLxKxD (N layers).
  """

  def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=None):
    param_dtype = dtype if param_dtype is None else param_dtype
    self.config = config
    self.dtype = dtype
    c = config
    self.embed_tokens = nnx.Embed(c.vocab_size, c.dim, rngs=rngs, dtype=dtype,
                                  param_dtype=param_dtype)
    blocks = [Block(c, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
              for _ in range(c.num_layers)]
    graphdef, _ = nnx.split(blocks[0])
    self.blocks = nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs),
                                                   *[nnx.state(b) for b in blocks]))
    sliding = [c.layer_type(i) == SLIDING for i in range(c.num_layers)]
    # Per-layer constants (tuples: static, hashable), fed to the scan as arrays.
    self.windows = tuple(c.sliding_window if s else FULL_WINDOW for s in sliding)
    self.thetas = tuple(c.rope_local_theta if s else c.rope_theta for s in sliding)
    self.rope_scales = tuple(1.0 if s else c.rope_scale for s in sliding)
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
               cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
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
      start = 0 if cache is None else cache.length
      positions_BxT = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
    graphdef, state = nnx.split(self.blocks)
    per_layer = (state, jnp.asarray(self.windows, jnp.int32),
                 jnp.asarray(self.thetas, jnp.float32), jnp.asarray(self.rope_scales, jnp.float32))

    if cache is None:
      def body(x, xs):
        st, window, theta, scale = xs
        x, _ = nnx.merge(graphdef, st)(x, positions_BxT, window, theta, scale)
        return x, None
      x, _ = jax.lax.scan(body, x, per_layer)
      return self.final_norm(x), None

    def body_cached(carry, xs):
      x, k_all, v_all, i = carry
      st, window, theta, scale = xs
      layer_cache = (k_all[i], v_all[i], cache.length)
      x, (kc, vc) = nnx.merge(graphdef, st)(x, positions_BxT, window, theta, scale, layer_cache)
      k_all = jax.lax.dynamic_update_index_in_dim(k_all, kc, i, 0)
      v_all = jax.lax.dynamic_update_index_in_dim(v_all, vc, i, 0)
      return (x, k_all, v_all, i + 1), None
    (x, k_all, v_all, _), _ = jax.lax.scan(
        body_cached, (x, cache.k_BxLxKxD, cache.v_BxLxKxD, jnp.zeros((), jnp.int32)), per_layer)
    return self.final_norm(x), KVCache(k_all, v_all, cache.length + t)

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

  def init_cache(self, batch: int, capacity: int, dtype=None) -> KVCache:
    """An empty cache of `capacity` slots (prompt + generated tokens) for every layer."""
    c = self.config
    dtype = self.dtype if dtype is None else dtype
    z = jnp.zeros((c.num_layers, batch, capacity, c.num_kv_heads, c.head_dim), dtype)
    return KVCache(z, z, jnp.zeros((), jnp.int32))


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
