"""The reader: a pretrained decoder as pure functions of its frozen weights and LoRA adapters.

The frozen weights are a pytree held outside the trained params (System.frozen); LoRA adapters
(memjax.layers.lora) are merged into them inside the jitted function, so an adapter's gradient
flows through the merged kernel and the frozen weights get none.

The reader answers with the ten digit tokens' logits at the last position (the prompt ends
right before the digit); accuracy is the argmax over those ten, the loss their cross-entropy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from memjax.layers import lora as lora_lib


def _blocks(m, b: int, t: int, layers: int | None = None):
  """What a scan over the decoder's first `layers` blocks (all by default) needs: the blocks'
  graphdef, their stacked (state, window, theta, rope scale) and the B x T positions."""
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  g, st = nnx.split(m.blocks)
  n = len(m.windows) if layers is None else layers
  per_layer = (jax.tree.map(lambda a: a[:n], st), jnp.asarray(m.windows[:n], jnp.int32),
               jnp.asarray(m.thetas[:n], jnp.float32), jnp.asarray(m.rope_scales[:n], jnp.float32))
  return g, per_layer, pos


class Reader:

  def __init__(self, pretrained, digit_ids, *, lora_scale: float = 1.0):
    self.graphdef, self.frozen = nnx.split(pretrained.model)
    self.config = pretrained.config
    self.dim = pretrained.config.dim
    self.bos = pretrained.tokenizer.bos_id
    self.digit_ids = tuple(int(i) for i in digit_ids)
    self.lora_scale = lora_scale

  def model(self, frozen, adapters=None):
    state = frozen if not adapters else lora_lib.merge(frozen, adapters, self.lora_scale)
    return nnx.merge(self.graphdef, state)

  def embed(self, frozen, ids_BxT):
    return nnx.merge(self.graphdef, frozen).embed(ids_BxT)

  def features(self, frozen, ids_BxT, layers: int):
    """Hidden states of the frozen reader after its first `layers` blocks (0: embeddings),
    forward only (no gradient flows into them)."""
    m = nnx.merge(self.graphdef, frozen)
    x = m.embed(ids_BxT)
    if layers:
      g, per_layer, pos = _blocks(m, *ids_BxT.shape, layers)

      def body(x, xs):
        s, window, theta, scale = xs
        return nnx.merge(g, s)(x, pos, window, theta, scale)[0], None
      x, _ = jax.lax.scan(body, x, per_layer)
    return jax.lax.stop_gradient(x)

  def layer_states(self, frozen, embeds_BxTxD):
    """Every block's output of the frozen reader (no LoRA) on these embeddings, L x B x T x D;
    differentiable in the embeddings (the distillation student) or not (stop_gradient outside)."""
    m = nnx.merge(self.graphdef, frozen)
    b, t, _ = embeds_BxTxD.shape
    g, per_layer, pos = _blocks(m, b, t)

    def body(x, xs):
      s, window, theta, scale = xs
      x = nnx.merge(g, s)(x, pos, window, theta, scale)[0]
      return x, x
    return jax.lax.scan(body, embeds_BxTxD.astype(m.dtype), per_layer)[1]

  def kv_states(self, frozen, embeds_BxTxD, layers: int | None = None):
    """The frozen reader's attention keys (after its key norm, before RoPE) and values at every
    layer on these embeddings: two L x B x T x K x D arrays (K kv heads); differentiable in
    the embeddings. Where the reader's lookup heads find a statement's digit in text.
    `layers`: only the first that many blocks run (L = layers)."""
    m = nnx.merge(self.graphdef, frozen)
    b, t, _ = embeds_BxTxD.shape
    g, per_layer, pos = _blocks(m, b, t, layers)

    def body(x, xs):
      s, window, theta, scale = xs
      blk = nnx.merge(g, s)
      xn = blk.attn_norm(x)
      a = blk.attn
      k = a.k(xn).reshape(b, t, a.num_kv_heads, a.head_dim)
      if a.k_norm is not None:
        k = a.k_norm(k)
      v = a.v(xn).reshape(b, t, a.num_kv_heads, a.head_dim)
      return blk(x, pos, window, theta, scale)[0], (k, v)
    return jax.lax.scan(body, embeds_BxTxD.astype(m.dtype), per_layer)[1]

  def bos_embeds(self, frozen, batch: int):
    return self.embed(frozen, jnp.full((batch, 1), self.bos, jnp.int32))

  def digit_logits(self, frozen, adapters, embeds_BxTxD, lookup: tuple[int, int] | None = None):
    """B x 10 float32 logits of the digit tokens after the last input position.

    lookup=(start, n): also return the attention of the last position over the n positions
    from `start` (the latents), every layer and query head: L x B x H x n (probabilities over
    all visible positions, so they sum to <= 1)."""
    m = self.model(frozen, adapters)
    if lookup is None:
      h, _ = m(embeds_BxTxD=embeds_BxTxD)
      return self._head(m, h)
    h, probs = self._forward_with_lookup(m, embeds_BxTxD, *lookup)
    return self._head(m, h), probs

  def _forward_with_lookup(self, m, embeds_BxTxD, start: int, n: int):
    """The decoder's own forward (no cache), plus each layer's attention of the last position
    over positions start..start+n-1 (recomputed from the block's q and k there)."""
    x = embeds_BxTxD.astype(m.dtype)
    b, t, _ = x.shape
    g, per_layer, pos = _blocks(m, b, t)

    def body(x, xs):
      s, window, theta, scale = xs
      blk = nnx.merge(g, s)
      q, k, _ = blk.attn.qkv(blk.attn_norm(x), pos / scale, theta)
      h, kh = q.shape[2], k.shape[2]
      qq = q[:, -1].reshape(b, kh, h // kh, -1)
      sc = jnp.einsum("bkgd,bskd->bkgs", qq, k, preferred_element_type=jnp.float32)
      sc = sc * blk.attn_scale
      if blk.attn_softcap is not None:
        sc = jnp.tanh(sc / blk.attn_softcap) * blk.attn_softcap
      sc = jnp.where(jnp.arange(t) > t - 1 - window, sc, -1e30)   # the sliding window
      p = jax.nn.softmax(sc, -1).reshape(b, h, t)[..., start:start + n]
      return blk(x, pos, window, theta, scale)[0], p
    x, probs = jax.lax.scan(body, x, per_layer)
    return m.final_norm(x), probs

  def _head(self, m, h):
    w = m.output_embedding()[jnp.asarray(self.digit_ids)]
    logits = jnp.einsum("bd,nd->bn", h[:, -1].astype(w.dtype), w,
                        preferred_element_type=jnp.float32)
    cap = self.config.final_logit_softcap
    return jnp.tanh(logits / cap) * cap if cap else logits


def scores(logits_Bx10, answer_B):
  """(loss, correct, count, per-example log p(answer)) of digit logits against the answers."""
  logp = jax.nn.log_softmax(logits_Bx10, -1)
  lp = jnp.take_along_axis(logp, answer_B[:, None], -1)[:, 0]
  correct = (jnp.argmax(logits_Bx10, -1) == answer_B).sum().astype(jnp.float32)
  return -lp.mean(), correct, jnp.asarray(answer_B.shape[0], jnp.float32), lp
