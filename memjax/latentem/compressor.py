"""LatentCompressor: removed tokens -> K latent vectors in the reader's embedding space.

    features_BxRxF (the frozen reader's embeddings, or its first layers' hidden states, of the
    removed tokens; forward only) -> norm, linear to d, + learned positions
    -> `layers` bidirectional transformer blocks (trainable)
    -> K learned queries cross-attend to the encoded tokens (pooling by attention, never a mean),
       with a learned query x position bias initialised to a locality prior (query k prefers the
       k-th stretch of R/K tokens): at init, plain cross-attention with random queries is nearly
       uniform, i.e. a mean pool, and every example's latents look alike (cosine ~0.9997
       measured on Gemma 3 270M features); the prior gives each latent its own statements
    -> MLP, linear to the reader's width, RMS-normalised and scaled to the reader's own
       embedding scale -> latents_BxKxD

Two switches, both measured on Gemma 3 270M (BUILD_NOTES.md, Latentem): `segments_BxR` (one
latent per removed statement: latent k pools only statement k's tokens, the boundaries the task
knows) and `token_values` (the pooled values are the reader's own token embeddings, mapped per
head, starting as the identity; the encoder then only decides where each latent looks; the
MLP / out path is unused).

The interface (features of the removed tokens and their mask in, K embeddings out) is the one a
diffusion-style writer (noise refined over denoise steps, cross-attending to the same encoding)
would keep, so one can stand in for the other.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from memjax.layers import Attention, GatedMLP, RMSNorm


class EncoderBlock(nnx.Module):
  """Pre-norm bidirectional self-attention + gated MLP over the removed tokens."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(dim)
    self.attn = Attention(dim, heads, rope_theta=None, rngs=rngs)
    self.mlp_norm = RMSNorm(dim)
    self.mlp = GatedMLP(dim, 2 * dim, rngs=rngs)

  def __call__(self, x_BxRxD, mask_BxR):
    mask = mask_BxR[:, None, :] & mask_BxR[:, :, None]
    x_BxRxD = x_BxRxD + self.attn(self.attn_norm(x_BxRxD), mask_BxTxS=mask)[0]
    return x_BxRxD + self.mlp(self.mlp_norm(x_BxRxD))


class LatentCompressor(nnx.Module):
  """Removed-token features -> K latents (see the module docstring)."""

  def __init__(self, feature_dim: int, out_dim: int, *, num_latents: int, dim: int, layers: int,
               heads: int, max_len: int, out_scale: float, locality: float = 4.0,
               token_values: bool = False, rngs: nnx.Rngs):
    self.in_norm = RMSNorm(feature_dim)
    self.inp = nnx.Linear(feature_dim, dim, rngs=rngs)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (max_len, dim)))
    self.blocks = nnx.List([EncoderBlock(dim, heads, rngs=rngs) for _ in range(layers)])
    self.queries = nnx.Param(jax.random.normal(rngs.params(), (num_latents, dim)))
    self.pool_norm = RMSNorm(dim)
    self.ctx_norm = RMSNorm(dim)
    self.heads = heads
    kw = dict(use_bias=False, rngs=rngs)
    self.pool_q, self.pool_k = nnx.Linear(dim, dim, **kw), nnx.Linear(dim, dim, **kw)
    self.pool_v, self.pool_o = nnx.Linear(dim, dim, **kw), nnx.Linear(dim, dim, **kw)
    chunk = jnp.arange(max_len) * num_latents // max_len
    self.pool_bias = nnx.Param(jnp.where(chunk[None, :] == jnp.arange(num_latents)[:, None],
                                         locality, 0.0))
    self.mlp_norm = RMSNorm(dim)
    self.mlp = GatedMLP(dim, 2 * dim, rngs=rngs)
    self.out = nnx.Linear(dim, out_dim, rngs=rngs)
    self.out_norm = RMSNorm(out_dim)
    self.out_scale = nnx.Param(jnp.asarray(out_scale, jnp.float32))
    self.token_values = token_values
    if token_values:
      # Per head, a map of the pooled token embeddings back into the reader's space: head 0
      # the identity (at init its part of a latent is a mix of its tokens' own embeddings,
      # something the reader already reads), the others random rotations. With every head the
      # identity, the heads' picks add up to one bag of tokens (KEY85 = 9 and KEY89 = 5 alike:
      # three digit tokens); the key never became readable from the latents (linear read-out
      # of the key at chance after 30 steps, measured), so neither could the reader's lookup.
      rot = jnp.linalg.qr(jax.random.normal(rngs.params(), (heads, out_dim, out_dim)))[0]
      self.value_maps = nnx.Param(rot.at[0].set(jnp.eye(out_dim)) * heads ** -0.5)

  def encode(self, features_BxRxF, mask_BxR):
    r = features_BxRxF.shape[1]
    x = self.inp(self.in_norm(features_BxRxF)) + self.pos[...][:r]
    for block in self.blocks:
      x = block(x, mask_BxR)
    return x

  def pooled(self, q_BxKxD, enc_BxRxD, mask_BxKxR):
    """Multi-head cross-attention of the K queries over the R encoded tokens, plus pool_bias."""
    b, k, d = q_BxKxD.shape
    r, h = enc_BxRxD.shape[1], self.heads
    q = self.pool_q(q_BxKxD).reshape(b, k, h, d // h)
    kk = self.pool_k(enc_BxRxD).reshape(b, r, h, d // h)
    v = self.pool_v(enc_BxRxD).reshape(b, r, h, d // h)
    s = jnp.einsum("bkhd,brhd->bhkr", q, kk) * (d // h) ** -0.5 + self.pool_bias[...][:, :r]
    s = jnp.where(mask_BxKxR[:, None], s, -1e30)
    a = jax.nn.softmax(s, -1)
    y = jnp.einsum("bhkr,brhd->bkhd", a, v).reshape(b, k, d)
    return self.pool_o(y), a

  def __call__(self, features_BxRxF: jax.Array, mask_BxR: jax.Array | None = None,
               segments_BxR: jax.Array | None = None,
               tokens_BxRxD: jax.Array | None = None) -> jax.Array:
    """segments_BxR (optional): which latent each removed token belongs to (-1: none); latent k
    then pools only its own tokens (one latent per statement). Without it, latent k may pool
    every token, with the locality prior. tokens_BxRxD: the reader's own embeddings of the
    removed tokens, the pooled values when token_values is on."""
    b, r, _ = features_BxRxF.shape
    if mask_BxR is None:
      mask_BxR = jnp.ones((b, r), bool)
    enc = self.encode(features_BxRxF, mask_BxR)
    pool_mask = jnp.broadcast_to(mask_BxR[:, None, :], (b, self.queries.shape[0], r))
    if segments_BxR is not None:
      own = segments_BxR[:, None, :] == jnp.arange(self.queries.shape[0])[None, :, None]
      # A latent whose statement is absent falls back to every token (no empty softmax).
      pool_mask = pool_mask & (own | ~own.any(-1, keepdims=True))
    q = jnp.broadcast_to(self.queries[...], (b,) + self.queries.shape)
    # No residual from the queries: they are the same for every example, and would dominate.
    h, attn_BxHxKxR = self.pooled(self.pool_norm(q), self.ctx_norm(enc), pool_mask)
    if self.token_values:
      # The same attention, pooling the reader's token embeddings, mapped per head.
      y = jnp.einsum("bhkr,brd->bhkd", attn_BxHxKxR, tokens_BxRxD.astype(jnp.float32))
      return jnp.einsum("bhkd,hde->bke", y, self.value_maps[...])
    h = h + self.mlp(self.mlp_norm(h))
    return self.out_norm(self.out(h)) * self.out_scale[...]
