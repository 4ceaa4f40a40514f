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
