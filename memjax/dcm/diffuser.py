"""The DCM Diffuser (the design's v1): writes the STM content from the input, for a frozen Generator.

    enc      = Encoder(Generator.embed(input tokens))        trainable layers over frozen embeddings
    content  = Diffuser(enc, noise)                          K slots, T denoise steps (lax.scan,
                                                             memjax.recurrence.denoise), each step
                                                             cross-attending to enc
             (+ Pointer: with `copy`, each slot adds the frozen embeddings of the input tokens it
              points at, so a value the Generator must say can be copied, not rebuilt)
    [BOS] [Q_mode | content] -> Generator -> question        trained end to end through the frozen
    [BOS] [A_mode | content] -> Generator -> answer          Generator (its params never move)

The input is the context and the question (the Generator reads only K + 2 rows: [A_mode] carries
no question), so the cost of an answer is K + 2 rows instead of the whole text. The content is a
`system.Content` pytree: the yardstick's zeroed / shuffled come from the memory protocol.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from memjax.dcm import soft_prompt as sp
from memjax.layers import Attention, CrossAttention, GatedMLP, RMSNorm
from memjax.layers.attention import attend
from memjax.recurrence import denoise as dn


@dataclasses.dataclass(frozen=True)
class DiffuserConfig:
  slots: int = 8                 # K content slots
  dim: int = 256                 # width of the encoder and the Diffuser
  heads: int = 4
  encoder_layers: int = 2
  steps: int = 4                 # T denoise steps
  sigma_max: float = 1.0
  schedule: str = "cosine"
  copy: bool = False             # add a pointer read of the raw input embeddings to each slot


class EncoderLayer(nnx.Module):
  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    self.attn_norm, self.mlp_norm = RMSNorm(dim), RMSNorm(dim)
    self.attn = Attention(dim, heads, rngs=rngs)
    self.mlp = GatedMLP(dim, 2 * dim, rngs=rngs)

  def __call__(self, x_BxNxD, mask_BxN):
    n = x_BxNxD.shape[1]
    keys = jnp.broadcast_to(mask_BxN[:, None, :], (x_BxNxD.shape[0], n, n))  # bidirectional,
    x = x_BxNxD + self.attn(self.attn_norm(x_BxNxD), mask_BxTxS=keys)[0]   # real tokens only
    return x + self.mlp(self.mlp_norm(x))


class Encoder(nnx.Module):
  """Trainable layers over the frozen Generator's input embeddings."""

  def __init__(self, in_dim: int, c: DiffuserConfig, *, rngs: nnx.Rngs):
    self.in_norm = RMSNorm(in_dim)
    self.proj = nnx.Linear(in_dim, c.dim, use_bias=False, rngs=rngs)
    self.layers = nnx.List([EncoderLayer(c.dim, c.heads, rngs=rngs)
                            for _ in range(c.encoder_layers)])
    self.out_norm = RMSNorm(c.dim)

  def __call__(self, embeds_BxNxE, mask_BxN):
    x = self.proj(self.in_norm(embeds_BxNxE))
    for layer in self.layers:
      x = layer(x, mask_BxN)
    return self.out_norm(x)


class Diffuser(nnx.Module):
  """K slots from noise, refined over T steps, each reading the encoder; out in the
  Generator's embedding space at its embedding scale."""

  def __init__(self, out_dim: int, out_scale: float, c: DiffuserConfig, *, rngs: nnx.Rngs):
    dn.noise_schedule(c.steps, c.sigma_max, c.schedule)      # validates
    self.c = c
    self.out_scale = out_scale
    self.slot_embed = nnx.Param(jax.random.normal(rngs.params(), (c.slots, c.dim)) * 0.5)
    self.read_norm = RMSNorm(c.dim)
    self.read = CrossAttention(c.dim, c.dim, c.heads, rngs=rngs)
    self.sigma_proj = nnx.Linear(c.dim, c.dim, use_bias=False, rngs=rngs)
    self.mlp_norm = RMSNorm(c.dim)
    self.mlp = GatedMLP(c.dim, 2 * c.dim, rngs=rngs)
    self.out_norm = RMSNorm(c.dim)
    self.out = nnx.Linear(c.dim, out_dim, use_bias=False, rngs=rngs)
    if c.copy:
      self.pointer = Pointer(c.dim, rngs=rngs)

  def step(self, y_BxKxD, carry, sigma, enc_BxNxD, mask_BxN):
    """A clean estimate of the slots from noisy ones: read the encoder, then refine."""
    c_in = jax.lax.rsqrt(1.0 + sigma ** 2)
    q = self.read_norm(y_BxKxD * c_in + self.slot_embed[...])
    read = self.read(q, enc_BxNxD, mask_BxN)
    x = read + self.sigma_proj(dn.sigma_embedding(sigma, self.c.dim))
    return read + self.mlp(self.mlp_norm(x + y_BxKxD * c_in)), carry, None

  def __call__(self, enc_BxNxD, mask_BxN, key, *, unroll: bool = False, embeds_BxNxE=None):
    b = enc_BxNxD.shape[0]
    c = self.c
    sigmas = dn.noise_schedule(c.steps, c.sigma_max, c.schedule)
    noise = jax.random.normal(key, (c.steps + 1, b, c.slots, c.dim), enc_BxNxD.dtype)
    y, _, _ = dn.denoise(lambda y, cr, s: self.step(y, cr, s, enc_BxNxD, mask_BxN), noise,
                         sigmas, unroll=unroll)
    # RMS-normed then scaled: the content sits at the scale of real token embeddings
    y = self.out_norm(y)
    out = self.out(y) * self.out_scale
    if c.copy:
      if embeds_BxNxE is None:
        raise ValueError("a copying Diffuser needs the input embeddings (embeds_BxNxE)")
      out = out + self.pointer(y, enc_BxNxD, embeds_BxNxE, mask_BxN)
    return out


class Pointer(nnx.Module):
  """Each slot points at input positions (keys: the encoder) and adds their raw embeddings.

  The frozen Generator reads a copied token embedding as that token; a value the Generator must
  say can then be copied into the STM instead of rebuilt through the D-wide projection.
  """

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.q = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
    self.k = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)

  def __call__(self, y_BxKxD, enc_BxNxD, embeds_BxNxE, mask_BxN):
    q, k = self.q(y_BxKxD)[:, :, None], self.k(enc_BxNxD)[:, :, None]      # one head
    mask = jnp.broadcast_to(mask_BxN[:, None, :], (q.shape[0], q.shape[1], mask_BxN.shape[1]))
    copied = attend(q, k, embeds_BxNxE.astype(jnp.float32)[:, :, None], mask)[:, :, 0]
    return copied.astype(embeds_BxNxE.dtype)


class Writer(nnx.Module):
  """Encoder + Diffuser: input embeddings -> STM content (B x K x E)."""

  def __init__(self, in_dim: int, out_scale: float, c: DiffuserConfig, *, rngs: nnx.Rngs):
    self.encoder = Encoder(in_dim, c, rngs=rngs)
    self.diffuser = Diffuser(in_dim, out_scale, c, rngs=rngs)

  def __call__(self, embeds_BxNxE, mask_BxN, key, *, unroll: bool = False):
    return self.diffuser(self.encoder(embeds_BxNxE, mask_BxN), mask_BxN, key, unroll=unroll,
                         embeds_BxNxE=embeds_BxNxE)


# --- training through the frozen Generator -----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Trainer:
  """Pure functions over (writer params, frozen Generator params); the Generator never moves.

  batch: "input" B x N tokens (context + question), "input_mask" B x N, "targets" B x S x T
  (question, answer, EOS-terminated), "mask" B x S x T.
  question_weight: the question's CE weight beside the answer's (1: their mean). At 0 the
  question is not run at all and the batch may hold the answer alone (S = 1, see `answer_only`).
  """
  gen: sp.Generator
  writer_def: object
  tx: optax.GradientTransformation
  question_weight: float = 1.0

  @staticmethod
  def answer_only(batch: dict, answer_len: int) -> dict:
    """The answer part of a (stacked) batch, cut to `answer_len` target tokens."""
    return dict(batch, targets=batch["targets"][..., 1:, :answer_len],
                mask=batch["mask"][..., 1:, :answer_len])

  def content(self, wparams, gparams, batch, key):
    writer = nnx.merge(self.writer_def, wparams)
    embeds = self.gen.merge(gparams).embed(batch["input"])
    return writer(embeds, batch["input_mask"] > 0, key)

  def loss(self, wparams, gparams, parts, batch, key):
    content = self.content(wparams, gparams, batch, key)
    s = batch["targets"].shape[1]
    if s == 1:        # the answer alone: [A_mode | content]
      parts = parts.replace(modes_SxD=parts.modes_SxD[1:])
    _, ce_BxS = sp.batch_losses(self.gen.merge(gparams), parts, content[:, None],
                                jnp.zeros((s,), jnp.int32), batch["targets"], batch["mask"])
    ce_S = ce_BxS.mean(0)
    if s == 1:
      return ce_S[0], ce_S
    w = jnp.asarray([self.question_weight, 1.0])
    return (ce_S * w).sum() / w.sum(), ce_S

  def steps(self, wparams, opt_state, gparams, parts, batches, key, step0):
    """len(batches) steps as one scan (batches stacked on a leading axis)."""
    def body(carry, xs):
      w, s = carry
      batch, i = xs
      k = jax.random.fold_in(key, i)
      (l, ce_S), g = jax.value_and_grad(self.loss, has_aux=True)(w, gparams, parts, batch, k)
      u, s = self.tx.update(g, s, w)
      return (optax.apply_updates(w, u), s), (l, ce_S)
    n = jax.tree.leaves(batches)[0].shape[0]
    (w, s), (l, ce) = jax.lax.scan(body, (wparams, opt_state), (batches, step0 + jnp.arange(n)))
    return w, s, l, ce
