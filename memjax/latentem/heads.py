"""Auxiliary heads that read the latents directly (not through the reader).

DigitProbe: a question (its frozen token embeddings, flattened) cross-attends to the K latents
and predicts the digit bound to the asked key: a cheap, direct signal that the latents carry
key -> digit bindings. ReconstructionHead: learned position queries cross-attend to the latents
and predict each removed token among the tokens the task uses.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from memjax.layers import CrossAttention, GatedMLP, RMSNorm


class DigitProbe(nnx.Module):

  def __init__(self, reader_dim: int, question_len: int, dim: int, heads: int, *,
               rngs: nnx.Rngs):
    self.q_norm = RMSNorm(reader_dim)
    self.q_in = nnx.Linear(question_len * reader_dim, dim, rngs=rngs)
    self.mem_norm = RMSNorm(reader_dim)
    self.mem_in = nnx.Linear(reader_dim, dim, rngs=rngs)
    self.attn = CrossAttention(dim, dim, heads, rngs=rngs)
    self.mlp_norm = RMSNorm(dim)
    self.mlp = GatedMLP(dim, 2 * dim, rngs=rngs)
    self.out = nnx.Linear(dim, 10, rngs=rngs)

  def __call__(self, question_embeds_BxSxQxD, latents_BxKxD):
    b, s, q, d = question_embeds_BxSxQxD.shape
    x = self.q_in(self.q_norm(question_embeds_BxSxQxD).reshape(b, s, q * d))
    mem = self.mem_in(self.mem_norm(latents_BxKxD))
    x = x + self.attn(x, mem)
    x = x + self.mlp(self.mlp_norm(x))
    return self.out(x)  # B x S x 10


class ReconstructionHead(nnx.Module):

  def __init__(self, reader_dim: int, length: int, classes: int, dim: int, heads: int, *,
               rngs: nnx.Rngs):
    self.queries = nnx.Param(jax.random.normal(rngs.params(), (length, dim)))
    self.mem_norm = RMSNorm(reader_dim)
    self.mem_in = nnx.Linear(reader_dim, dim, rngs=rngs)
    self.attn = CrossAttention(dim, dim, heads, rngs=rngs)
    self.out = nnx.Linear(dim, classes, rngs=rngs)

  def __call__(self, latents_BxKxD):
    b = latents_BxKxD.shape[0]
    q = jnp.broadcast_to(self.queries[...], (b,) + self.queries.shape)
    x = q + self.attn(q, self.mem_in(self.mem_norm(latents_BxKxD)))
    return self.out(x)  # B x R x classes


class BindingHead(nnx.Module):
  """Linear read-outs of latent k -> the key and the digit of removed statement k (one latent
  per statement): the binding itself as a target, so the compressor cannot drop the content
  while the reader has not yet learnt to look it up. A key (0-99) is read as its two factors
  (key // 10, key % 10: the two digits of KEYnn, the colour and the object of the prose
  names), each ten-way: one 100-way linear read-out learnt far slower (measured)."""

  def __init__(self, reader_dim: int, *, rngs: nnx.Rngs):
    self.norm = RMSNorm(reader_dim)
    self.out = nnx.Linear(reader_dim, 30, rngs=rngs)

  def __call__(self, latents_BxKxD):
    """B x K x 3 x 10 logits: key // 10, key % 10, digit."""
    y = self.out(self.norm(latents_BxKxD))
    return y.reshape(y.shape[:-1] + (3, 10))
