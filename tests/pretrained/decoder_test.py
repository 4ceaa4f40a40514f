"""The decoder's own equivalences: cached == full, embeds == tokens, greedy == argmax loop.

Each check runs inside one jit (first eager calls of many small ops cost more than a compile).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax import pretrained

TOL = 1e-5  # float32, same math in a different order


@pytest.fixture(scope="module", params=["qwen2", "gemma3"])
def tiny(request):
  return pretrained.make_tiny(request.param, seed=3)


TEXT = "sliding windows are short here"  # 31 ids with BOS; one shape for every test below


@pytest.fixture(scope="module")
def tiny_gemma():
  return pretrained.make_tiny("gemma3", seed=3)


def _ids(tok, text=TEXT, batch=2):
  ids = tok.encode(text, add_bos=True)
  return jnp.asarray([ids, ids[::-1]][:batch])


@nnx.jit
def _full_logits(model, tokens_BxT):
  return model.logits(model(tokens_BxT)[0])


def test_make_tiny_is_deterministic_and_seeded(tiny):
  again = pretrained.make_tiny(tiny.config.arch, seed=3)
  other = pretrained.make_tiny(tiny.config.arch, seed=4)
  ids = _ids(tiny.tokenizer)
  a, b, c = (_full_logits(p.model, ids) for p in (tiny, again, other))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c))


@nnx.jit
def _chunked_logits(model, ids_BxT):
  """Prefill 7 tokens, then 5, then one token at a time (a scan) through the cache."""
  b, t = ids_BxT.shape
  cache = model.init_cache(b, t + 3)
  h1, cache = model(ids_BxT[:, :7], cache=cache)
  h2, cache = model(ids_BxT[:, 7:12], cache=cache)

  def step(cache, tok_B):
    h, cache = model(tok_B[:, None], cache=cache)
    return cache, h[:, 0]
  cache, h3 = jax.lax.scan(step, cache, ids_BxT[:, 12:].T)
  hidden = jnp.concatenate([h1, h2, h3.swapaxes(0, 1)], 1)
  return model.logits(hidden), cache.length


def test_cached_chunks_equal_full_forward(tiny):
  """Including sliding-window layers on a sequence several windows long."""
  ids = _ids(tiny.tokenizer)
  t = ids.shape[1]
  if tiny.config.sliding_window:
    assert t > 3 * tiny.config.sliding_window
  got, length = _chunked_logits(tiny.model, ids)
  assert int(length) == t
  np.testing.assert_allclose(np.asarray(got), np.asarray(_full_logits(tiny.model, ids)),
                             atol=TOL, rtol=0)


def test_embed_scaling(tiny):
  ids = _ids(tiny.tokenizer, "x", batch=1)
  raw = tiny.model.embed_tokens(ids)
  scale = tiny.config.dim ** 0.5 if tiny.config.arch == "gemma3" else 1.0
  np.testing.assert_allclose(np.asarray(tiny.model.embed(ids)), np.asarray(raw) * scale,
                             rtol=1e-6)


def test_greedy_generate_equals_argmax_loop_from_tokens_and_embeds(tiny):
  model = tiny.model
  full = _ids(tiny.tokenizer)
  n = 6
  ids, t = full[:, :-n], full.shape[1] - n
  buf = full  # the same shape as the other tests: their compiled forward serves here
  for i in range(n):  # no cache: re-run the whole (fixed-shape) sequence each step
    nxt = jnp.argmax(_full_logits(model, buf)[:, t - 1 + i], -1)  # causal: later slots unseen
    buf = buf.at[:, t + i].set(nxt)
  want = np.asarray(buf[:, t:])
  got, logits = pretrained.greedy_generate(model, tokens_BxT=ids, max_new_tokens=n,
                                           return_logits=True)
  assert got.dtype == jnp.int32 and got.shape == (2, n)
  assert logits.dtype == jnp.float32 and logits.shape == (2, n, tiny.config.vocab_size)
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1)), want)
  if tiny.config.arch != "gemma3":  # the embeds path differs by arch only in the scaling
    return
  # The soft-prompt path: the same prompt given as input embeddings.
  from_embeds, embeds_logits = pretrained.greedy_generate(
      model, embeds_BxTxD=model.embed(ids), max_new_tokens=n, return_logits=True)
  np.testing.assert_array_equal(np.asarray(from_embeds), want)
  np.testing.assert_allclose(np.asarray(embeds_logits), np.asarray(logits), atol=TOL, rtol=0)


def test_greedy_generate_keeps_emitting_eos(tiny):
  if tiny.config.arch != "qwen2":
    pytest.skip("decoder-independent: once is enough")
  ids = _ids(tiny.tokenizer)[:, :-6]
  free, _ = pretrained.greedy_generate(tiny.model, tokens_BxT=ids, max_new_tokens=6,
                                       return_logits=True)
  free = np.asarray(free)
  eos = int(free[0, 1])  # pretend the second token of row 0 is EOS
  got, _ = pretrained.greedy_generate(tiny.model, tokens_BxT=ids, max_new_tokens=6, eos_id=eos,
                                      return_logits=True)
  got = np.asarray(got)
  for row in range(2):
    hits = np.flatnonzero(free[row] == eos)
    first = hits[0] if len(hits) else 6
    np.testing.assert_array_equal(got[row, :first + 1], free[row, :first + 1])
    assert (got[row, first:] == eos).all()
  with pytest.raises(ValueError, match="max_new_tokens"):
    pretrained.greedy_generate(tiny.model, tokens_BxT=ids, max_new_tokens=0)
  with pytest.raises(ValueError, match="exactly one"):
    pretrained.greedy_generate(tiny.model, max_new_tokens=2)


@nnx.jit
def _log_probs_three_ways(model, ids_BxT):
  h, _ = model(ids_BxT[:, :-1])
  targets = ids_BxT[:, 1:]
  full = jax.nn.log_softmax(model.logits(h), -1)
  want = jnp.take_along_axis(full, targets[..., None], -1)[..., 0]
  return want, [pretrained.token_log_probs(model, h, targets, chunk=c) for c in (None, 4)]


def test_greedy_generate_ragged_prompts_equal_each_row_alone(tiny):
  """Right-padded prompts of per-row lengths (no cache) == each row's cached decode alone."""
  model = tiny.model
  ids = jax.random.randint(jax.random.key(1), (3, 8), 4, 300)
  plen = jnp.asarray([8, 3, 5])
  junk = jnp.where(jnp.arange(8)[None] < plen[:, None], ids, 7)   # what sits past a prompt
  got = pretrained.greedy_generate(model, tokens_BxT=junk, max_new_tokens=4, prompt_len_B=plen)
  for n in range(3):
    want = pretrained.greedy_generate(model, tokens_BxT=ids[n:n + 1, :int(plen[n])],
                                      max_new_tokens=4)
    np.testing.assert_array_equal(got[n], want[0])


def test_token_log_probs_chunked_equals_full(tiny_gemma):
  tiny = tiny_gemma
  want, got = _log_probs_three_ways(tiny.model, _ids(tiny.tokenizer))
  for g in got:
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), atol=TOL, rtol=0)


def test_gradient_reaches_soft_prompt(tiny_gemma):
  """Phase 1a differentiates the loss w.r.t. input embeddings through the frozen model."""
  tiny = tiny_gemma
  model = tiny.model
  ids = _ids(tiny.tokenizer)

  @jax.jit
  def grad(soft):
    def loss(soft):
      h, _ = model(embeds_BxTxD=jnp.concatenate([soft, model.embed(ids)], 1))
      return -pretrained.token_log_probs(model, h[:, 2:-1], ids).mean()
    return jax.grad(loss)(soft)

  g = grad(jnp.zeros((2, 3, tiny.config.dim)))
  assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0
