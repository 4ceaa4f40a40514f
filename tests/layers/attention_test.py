"""Dense attention: GQA equals repeated heads; cached decoding equals the full pass."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax.layers import Attention, KVCache, attend, causal_mask
from memjax.layers.attention import NEG_INF, softmax


def test_grouped_heads_equal_repeated_kv_heads():
  ks = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(ks[0], (2, 5, 6, 8))
  k = jax.random.normal(ks[1], (2, 7, 2, 8))
  v = jax.random.normal(ks[2], (2, 7, 2, 8))
  mask = jax.random.bernoulli(ks[0], 0.7, (2, 5, 7))
  got = attend(q, k, v, mask)
  want = attend(q, jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2), mask)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_fully_masked_rows_give_zeros():
  q = jnp.ones((1, 2, 2, 4))
  k = v = jnp.ones((1, 3, 2, 4))
  mask = jnp.array([[[False] * 3, [True] * 3]])
  out = attend(q, k, v, mask)
  np.testing.assert_array_equal(out[0, 0], 0.0)
  np.testing.assert_allclose(out[0, 1], 1.0)


def _attn(**kw):
  return Attention(16, 4, 2, qkv_bias=True, qk_norm=True, rngs=nnx.Rngs(0), **kw)


def test_cached_decoding_equals_full_forward():
  attn = _attn()
  x = jax.random.normal(jax.random.key(1), (2, 9, 16))
  full, _ = attn(x)
  cache = KVCache.init(2, 12, 2, 4)
  y0, cache = attn(x[:, :4], cache=cache)          # prefill 4 tokens
  outs = [y0]
  for t in range(4, 9):                             # then one token at a time
    y, cache = attn(x[:, t:t + 1], cache=cache)
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
  assert int(cache.length) == 9


def test_cached_decoding_with_window_equals_windowed_forward():
  attn = _attn()
  x = jax.random.normal(jax.random.key(2), (1, 10, 16))
  full, _ = attn(x, window=3)
  cache = KVCache.init(1, 10, 2, 4)
  outs = []
  for t in range(10):
    y, cache = attn(x[:, t:t + 1], cache=cache, window=3)
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)


def test_window_mask_limits_lookback():
  pos = jnp.arange(6)[None]
  m = causal_mask(pos, pos, window=2)[0]
  assert m[5].tolist() == [False, False, False, False, True, True]


def test_softmax_equals_jax_softmax_values_and_gradients():
  """The einsum-backward softmax (issue 16) against jax.nn.softmax: values and gradients,
  with masked (NEG_INF) entries and a fully masked row, under jit and vmap; and through
  `attend`, whose gradients equal attention written with jax.nn.softmax."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 7)) * 3
  x = x.at[0, 1, 2, 3:].set(NEG_INF).at[1, 0, 4].set(NEG_INF)
  g = jax.random.normal(jax.random.key(1), x.shape)
  ref = lambda x: jax.nn.softmax(x, axis=-1)
  np.testing.assert_allclose(softmax(x), ref(x), rtol=1e-6, atol=1e-7)
  vjp = lambda f: jax.jit(lambda x, g: jax.vjp(f, x)[1](g)[0])
  np.testing.assert_allclose(vjp(softmax)(x, g), vjp(ref)(x, g), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(vjp(softmax))(x, g), vjp(ref)(x, g), rtol=1e-5, atol=1e-6)
  assert not np.allclose(vjp(softmax)(x, g), 0.0)

  q, k, v = (jax.random.normal(jax.random.key(i), (2, 6, 4, 8)) for i in (2, 3, 4))
  mask = causal_mask(jnp.broadcast_to(jnp.arange(6), (2, 6)), jnp.broadcast_to(jnp.arange(6), (2, 6)))
  mask = mask.at[1, 2].set(False)   # a row with no visible key

  def with_jax_softmax(q, k, v):
    s = jnp.einsum("bthd,bshd->bhts", q, k) * 8 ** -0.5
    p = jax.nn.softmax(jnp.where(mask[:, None], s, NEG_INF), axis=-1)
    p = jnp.where(mask[:, None].any(-1, keepdims=True), p, 0.0)
    return jnp.einsum("bhts,bshd->bthd", p, v)

  loss = lambda f: jax.jit(jax.grad(lambda *a: (f(*a) ** 2).sum(), argnums=(0, 1, 2)))
  ours = loss(lambda q, k, v: attend(q, k, v, mask))(q, k, v)
  for a, b in zip(ours, loss(with_jax_softmax)(q, k, v)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
