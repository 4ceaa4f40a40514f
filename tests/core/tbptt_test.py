"""TBPTT: the scan equals the unrolled loop; truncation cuts gradients where it says."""
import jax
import jax.numpy as jnp
import numpy as np

from memjax.core import tbptt


def _apply(w):
  def apply(mem, seg):
    mem = jnp.tanh(mem @ w + seg)
    return mem, mem.sum(-1)
  return apply


def test_scan_equals_unrolled_forward_and_grad():
  w = jax.random.normal(jax.random.key(0), (4, 4)) * 0.5
  segs = jax.random.normal(jax.random.key(1), (5, 2, 4))
  mem0 = jnp.zeros((2, 4))

  def loss(w, unroll, k):
    mem, outs = tbptt.run_segments(_apply(w), mem0, segs, truncate_every=k, unroll=unroll)
    return (outs ** 2).sum() + mem.sum()

  for k in (0, 2):
    np.testing.assert_allclose(loss(w, False, k), loss(w, True, k), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(w, False, k), jax.grad(loss)(w, True, k), rtol=1e-5)


def test_truncation_stops_gradient_to_early_segments():
  w = jnp.eye(3) * 0.9
  segs = jnp.ones((4, 1, 3))

  def last_out(segs, k):
    _, outs = tbptt.run_segments(_apply(w), jnp.zeros((1, 3)), segs, truncate_every=k)
    return outs[-1].sum()

  g_full = jax.grad(last_out)(segs, 0)
  g_cut = jax.grad(last_out)(segs, 2)
  assert np.all(np.abs(g_full[0]) > 0)           # without truncation segment 0 matters
  np.testing.assert_array_equal(g_cut[:2], 0.0)  # memory detached entering segment 2
  assert np.all(np.abs(g_cut[2:]) > 0)


def test_split_merge_roundtrip():
  x = jnp.arange(24).reshape(2, 12)
  s = tbptt.split_segments(x, 4)
  assert s.shape == (3, 2, 4)
  np.testing.assert_array_equal(s[1, 0], x[0, 4:8])
  np.testing.assert_array_equal(tbptt.merge_segments(s), x)
