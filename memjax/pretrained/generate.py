"""Greedy decoding: with a KV cache (one prefill, then a lax.scan over the new tokens), or,
for right-padded prompts of different lengths per row, without one (each step re-reads the
whole fixed-size buffer: no compile per prompt length)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from memjax.pretrained.decoder import Decoder


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "return_logits"))
def _greedy(graphdef, state, tokens_BxT, embeds_BxTxD, eos_id, *, max_new_tokens: int,
            return_logits: bool):
  """eos_id: int32 scalar, -1 for none (traced: one compile serves every eos id)."""
  model = nnx.merge(graphdef, state)
  prompt = tokens_BxT if tokens_BxT is not None else embeds_BxTxD
  b, t = prompt.shape[:2]
  cache = model.init_cache(b, t + max_new_tokens)
  hidden, cache = model(tokens_BxT, embeds_BxTxD=embeds_BxTxD, cache=cache)
  logits_BxV = model.logits(hidden[:, -1])
  first = jnp.argmax(logits_BxV, -1).astype(jnp.int32)
  done = first == eos_id

  def step(carry, _):
    token_B, done_B, cache = carry
    hidden, cache = model(token_B[:, None], cache=cache)
    lg = model.logits(hidden[:, 0])
    nxt = jnp.argmax(lg, -1).astype(jnp.int32)
    nxt = jnp.where(done_B, eos_id, nxt)  # after EOS a row keeps emitting EOS
    done_B = done_B | (nxt == eos_id)
    return (nxt, done_B, cache), (nxt, lg if return_logits else None)

  _, (rest, rest_logits) = jax.lax.scan(step, (first, done, cache), None,
                                        length=max_new_tokens - 1)
  tokens = jnp.concatenate([first[:, None], rest.T], axis=1)
  if not return_logits:
    return tokens
  return tokens, jnp.concatenate([logits_BxV[:, None], rest_logits.swapaxes(0, 1)], axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _greedy_ragged(graphdef, state, embeds_BxTxD, prompt_len_B, eos_id, *, max_new_tokens: int):
  """Row b's prompt is its first prompt_len_B[b] rows; no cache (the rows differ in where the
  next token goes), so each step runs the whole P + N buffer: meant for short prompts."""
  model = nnx.merge(graphdef, state)
  b, p, d = embeds_BxTxD.shape
  buf = jnp.concatenate([embeds_BxTxD.astype(model.dtype),
                         jnp.zeros((b, max_new_tokens, d), model.dtype)], 1)
  rows = lambda x, at: jax.vmap(lambda r, i: jax.lax.dynamic_index_in_dim(r, i, 0, False))(x, at)
  put = jax.vmap(lambda r, x, i: jax.lax.dynamic_update_index_in_dim(r, x, i, 0))

  def step(carry, i):
    buf, done = carry
    hidden, _ = model(embeds_BxTxD=buf)        # causal: rows past the prompt are unseen
    nxt = jnp.argmax(model.logits(rows(hidden, prompt_len_B - 1 + i)), -1).astype(jnp.int32)
    nxt = jnp.where(done, eos_id, nxt)
    done = done | (nxt == eos_id)
    buf = put(buf, model.embed(nxt[:, None])[:, 0].astype(buf.dtype), prompt_len_B + i)
    return (buf, done), nxt

  _, toks = jax.lax.scan(step, (buf, jnp.zeros((b,), bool)), jnp.arange(max_new_tokens))
  return toks.T


def greedy_generate(model: Decoder, *, tokens_BxT: jax.Array | None = None,
                    embeds_BxTxD: jax.Array | None = None, max_new_tokens: int,
                    eos_id: int | None = None, return_logits: bool = False,
                    prompt_len_B: jax.Array | None = None):
  """int32 BxN greedy continuation of a prompt given as token ids or as input embeddings.

  Rows that emit `eos_id` keep emitting it, so every row has N = max_new_tokens entries.
  With `return_logits`, also the float32 BxNxV logits each token was chosen from.
  `prompt_len_B`: right-padded prompts, row b's prompt being its first prompt_len_B[b]
  entries (no KV cache on this path; return_logits is not offered).
  Compiled once per (model structure, prompt shape, N, return_logits).
  """
  if (tokens_BxT is None) == (embeds_BxTxD is None):
    raise ValueError("greedy_generate: give exactly one of tokens_BxT and embeds_BxTxD")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
  graphdef, state = nnx.split(model)
  if tokens_BxT is not None:
    tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
  eos = jnp.asarray(-1 if eos_id is None else eos_id, jnp.int32)
  if prompt_len_B is not None:
    if return_logits:
      raise ValueError("greedy_generate: return_logits is not offered with prompt_len_B")
    embeds = model.embed(tokens_BxT) if embeds_BxTxD is None else embeds_BxTxD
    return _greedy_ragged(graphdef, state, embeds, jnp.asarray(prompt_len_B, jnp.int32), eos,
                          max_new_tokens=max_new_tokens)
  return _greedy(graphdef, state, tokens_BxT, embeds_BxTxD, eos, max_new_tokens=max_new_tokens,
                 return_logits=bool(return_logits))
