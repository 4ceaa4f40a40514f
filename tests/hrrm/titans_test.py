"""Titans memory: the chunked scan equals the step-by-step update; flags switch the terms off."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import titans_recall
from memjax.core import memory as memory_lib
from memjax.core import scan as scan_lib
from memjax.hrrm import model as hrrm_model
from memjax.hrrm import titans

B, D, HID = 2, 4, 6


def _data(key, t):
  ks = jax.random.split(key, 6)
  k = jax.random.normal(ks[0], (B, t, D))
  v = jax.random.normal(ks[1], (B, t, D))
  theta = 0.05 * jax.random.uniform(ks[2], (B, t))
  return k, v, theta, ks[3:]


def _gates(keys, n):
  beta = 0.5 + 0.4 * jax.random.uniform(keys[0], (B, n))
  decay = 0.1 * jax.random.uniform(keys[1], (B, n))
  return beta, decay


def test_linear_memory_matches_handwritten_token_by_token_recurrence():
  """chunk=1, one linear layer: M <- (1-a) M + S, S <- b S - theta * 2 k (k M - v)^T."""
  t = 5
  k, v, theta, ks = _data(jax.random.key(0), t)
  beta, decay = _gates(ks, t)
  w0 = jax.random.normal(ks[2], (D, D)) * 0.3
  state, reads = jax.jit(lambda *a: titans.memorize(*a, chunk=1))(
      titans.init_state((w0,), B), k, v, theta, beta, decay)
  k, v, theta, beta, decay = map(np.asarray, (k, v, theta, beta, decay))
  m = np.broadcast_to(np.asarray(w0), (B, D, D)).copy()
  s = np.zeros_like(m)
  for b in range(B):
    for i in range(t):
      np.testing.assert_allclose(reads[b, i], k[b, i] @ m[b], rtol=1e-5, atol=1e-6)
      g = theta[b, i] * 2.0 * np.outer(k[b, i], k[b, i] @ m[b] - v[b, i])
      s[b] = beta[b, i] * s[b] - g
      m[b] = (1.0 - decay[b, i]) * m[b] + s[b]
  np.testing.assert_allclose(state.weights[0], m, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.momentum[0], s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum,forget", [(True, True), (False, True), (True, False),
                                             (False, False)])
def test_chunked_scan_equals_loop_of_chunk_updates(momentum, forget):
  t, c = 12, 4
  n = t // c
  k, v, theta, ks = _data(jax.random.key(1), t)
  beta, decay = _gates(ks, n)
  w0 = (jax.random.normal(ks[2], (D, HID)) * 0.3, jax.random.normal(ks[0], (HID, D)) * 0.3)
  st0 = titans.init_state(w0, B)
  kw = dict(use_momentum=momentum, use_forget=forget)
  state, reads = jax.jit(lambda *a: titans.memorize(*a, chunk=c, **kw))(
      st0, k, v, theta, beta, decay)
  per_example_grad = jax.jit(lambda w, k, v, th: jax.grad(titans.associative_loss)(
      tuple(x[None] for x in w), k[None], v[None], th[None]))
  st = st0
  for j in range(n):
    sl = slice(j * c, (j + 1) * c)
    np.testing.assert_allclose(reads[:, sl], titans.read(st, k[:, sl]), rtol=1e-5, atol=1e-6)
    # The surprise by hand: per example, the gradient of that example's loss alone.
    g = [per_example_grad(tuple(x[b] for x in st.weights), k[b, sl], v[b, sl], theta[b, sl])
         for b in range(B)]
    g = tuple(jnp.concatenate([gb[i] for gb in g]) for i in range(2))
    mom = tuple((beta[:, j].reshape(-1, 1, 1) * m if momentum else 0.0) - gi
                for m, gi in zip(st.momentum, g))
    w = tuple((1.0 - decay[:, j].reshape(-1, 1, 1) if forget else 1.0) * wi + si
              for wi, si in zip(st.weights, mom))
    st = titans.TitansState(w, mom)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(st)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_memory_learns_an_association():
  """Writing (k, v) repeatedly makes M(k) approach v: the surprise really is a gradient."""
  k, v, _, ks = _data(jax.random.key(2), 4)
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  w0 = (jnp.zeros((D, D)),)
  st = titans.init_state(w0, B)
  err0 = float(jnp.sum((titans.read(st, k) - v) ** 2))
  upd = jax.jit(lambda st: titans.update(st, k, v, jnp.full((B, 4), 0.2), jnp.zeros(B),
                                         jnp.zeros(B)))
  for _ in range(30):
    st = upd(st)
  assert float(jnp.sum((titans.read(st, k) - v) ** 2)) < 0.2 * err0


def test_titans_state_follows_the_memory_protocol():
  w0 = (jnp.arange(6.0).reshape(2, 3),)
  st = titans.init_state(w0, 3)
  st = titans.TitansState((st.weights[0] * jnp.arange(3.0)[:, None, None],),
                          (jnp.ones((3, 2, 3)),))
  flat = memory_lib.flat(st)
  assert flat.shape == (3, 12)   # weights and momentum, per example
  np.testing.assert_array_equal(memory_lib.flat(memory_lib.shuffled(st)), jnp.roll(flat, 1, 0))
  assert not any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(memory_lib.zeroed(st)))


def test_chunk_must_divide_length():
  k, v, theta, ks = _data(jax.random.key(3), 5)
  with pytest.raises(ValueError, match="multiple of chunk"):
    titans.memorize(titans.init_state((jnp.zeros((D, D)),), B), k, v, theta,
                    jnp.zeros((B, 2)), jnp.zeros((B, 2)), chunk=2)


def test_mac_unrolled_chunks_equal_the_scan():
  """MAC's chunk loop, unrolled by default up to UNROLL_UP_TO chunks, equals the scan: logits,
  the memory state after the last chunk, and the gradients of both."""
  m = titans_recall.get_config("tiny").model
  lm = hrrm_model.build(m, 20)
  graphdef, params = nnx.split(lm, nnx.Param)
  n = 3
  assert n <= scan_lib.UNROLL_UP_TO
  tokens = jax.random.randint(jax.random.key(0), (2, n * m.chunk), 0, 20)

  def loss(params, unroll):
    model = nnx.merge(graphdef, params)
    logits, state = model(tokens, model.init_memory(2), unroll=unroll)
    return (logits ** 2).mean() + sum((w ** 2).mean() for w in jax.tree.leaves(state)), (
        logits, state)

  g = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (l_scan, out_scan), g_scan = g(params, False)
  (l_def, out_def), g_def = g(params, None)
  assert f"unroll={n}" in str(jax.make_jaxpr(loss, static_argnums=1)(params, None))
  assert "unroll=1" in str(jax.make_jaxpr(loss, static_argnums=1)(params, False))
  np.testing.assert_allclose(l_def, l_scan, rtol=1e-6)
  # The two loops sum in different orders: float32 rounding on the scale of each leaf's
  # largest entry (gradients reach ~10 here), so atol follows that scale.
  for a, b in zip(jax.tree.leaves((out_def, g_def)), jax.tree.leaves((out_scan, g_scan))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(b).max())))
