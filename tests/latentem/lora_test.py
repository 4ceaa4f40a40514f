"""LoRA: zero-initialised B is the frozen model bit for bit; merged == unmerged."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax import pretrained
from memjax.layers import lora


def _model():
  p = pretrained.make_tiny("gemma3", seed=1)
  g, st = nnx.split(p.model)
  return g, st


def _forward(g, st, ids):
  return nnx.merge(g, st)(ids)[0]


def test_zero_b_is_the_frozen_model_bit_for_bit():
  g, st = _model()
  ad = lora.init(jax.random.key(0), st, targets=("q", "k", "v", "o", "gate", "up", "down"), rank=4)
  assert len(ad) == 7 and all(float(jnp.abs(a.a).sum()) > 0 for a in ad.values())
  ids = jnp.asarray(np.random.default_rng(0).integers(3, 300, (2, 12)), jnp.int32)
  fwd = jax.jit(_forward, static_argnums=0)
  frozen = fwd(g, st, ids)
  adapted = fwd(g, lora.merge(st, ad, 2.0), ids)
  assert np.array_equal(np.asarray(frozen), np.asarray(adapted))


def test_merged_equals_unmerged_and_changes_the_output():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((16, 24)), jnp.float32)
  ad = lora.Adapter(a=jnp.asarray(rng.standard_normal((16, 4)), jnp.float32),
                    b=jnp.asarray(rng.standard_normal((4, 24)), jnp.float32))
  x = jnp.asarray(rng.standard_normal((5, 16)), jnp.float32)
  merged = lora.merge({"q": {"kernel": w}}, {"q/kernel": ad}, 0.5)["q"]["kernel"]
  np.testing.assert_allclose(x @ merged, lora.apply(x, w, ad, 0.5), rtol=1e-5, atol=1e-5)
  assert not np.allclose(x @ merged, x @ w, atol=1e-3)


def test_merged_model_equals_unmerged_layerwise_and_gradient_reaches_b():
  g, st = _model()
  ad = lora.init(jax.random.key(1), st, targets=("q",), rank=2)
  (path, a), = ad.items()
  a = a.replace(b=0.1 * jnp.ones_like(a.b))
  merged = lora.merge(st, {path: a}, 1.0)
  w = lora.targeted(st, ("q",))[path]
  wm = lora.targeted(merged, ("q",))[path]
  x = jnp.ones((3, w.shape[1]))
  for layer in range(w.shape[0]):
    one = lora.Adapter(a=a.a[layer], b=a.b[layer])
    np.testing.assert_allclose(x @ wm[layer], lora.apply(x, w[layer], one, 1.0), rtol=1e-5,
                               atol=1e-5)
  ids = jnp.ones((1, 6), jnp.int32)
  grad = jax.grad(lambda b: _forward(g, lora.merge(st, {path: a.replace(b=b)}, 1.0), ids).sum())(
      a.b)
  assert float(jnp.abs(grad).sum()) > 0


def test_b_std_gives_a_small_random_b_and_the_same_a():
  g, st = _model()
  zero = lora.init(jax.random.key(0), st, targets=("q", "k"), rank=4)
  rand = lora.init(jax.random.key(0), st, targets=("q", "k"), rank=4, b_std=0.01)
  for p in zero:
    np.testing.assert_array_equal(np.asarray(zero[p].a), np.asarray(rand[p].a))
    b = np.asarray(rand[p].b)
    assert b.shape == zero[p].b.shape and 0.005 < b.std() < 0.02
  # q and k get different B (no shared draw).
  bq, bk = [np.asarray(rand[p].b) for p in sorted(rand)]
  assert not np.array_equal(bq.ravel()[:8], bk.ravel()[:8])
