"""HRM recursion: scanned == unrolled, one-step gradient reaches only the final steps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax.layers import dense
from memjax.recurrence import hrm


def _steps(key, d=8):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  params = {"wl": jax.random.normal(k1, (d, d)) / d ** 0.5,
            "wh": jax.random.normal(k2, (d, d)) / d ** 0.5}
  l_step = lambda p: (lambda z_L, z_H, x: jnp.tanh((z_L + z_H + x) @ p["wl"]))
  h_step = lambda p: (lambda z_H, z_L: jnp.tanh((z_H + z_L) @ p["wh"]))
  x = jax.random.normal(k3, (3, d))
  zh, zl = jax.random.normal(k4, (2, 3, d))
  return params, l_step, h_step, x, zh, zl


def _loss(fn, params, l_step, h_step, x, zh, zl, **kw):
  z_H, z_L = fn(l_step(params), h_step(params), x, zh, zl, **kw)
  return jnp.sum(z_H ** 2) + 0.5 * jnp.sum(z_L)


@pytest.mark.parametrize("H,L,one_step_grad", [(1, 3, True), (3, 1, True),
                                               (3, 2, True), (3, 2, False)])
def test_scan_equals_unrolled_and_reference(H, L, one_step_grad):
  params, l_step, h_step, x, zh, zl = _steps(jax.random.key(0))
  kw = dict(H=H, L=L, one_step_grad=one_step_grad)
  args = (params, l_step, h_step, x, zh, zl)
  outs = []
  for fn, extra in [(hrm.recurse, {}), (hrm.recurse, {"unroll": True}),
                    (hrm.recurse_reference, {})]:
    f = lambda p, x, zh, zl: _loss(fn, p, l_step, h_step, x, zh, zl, **kw, **extra)
    outs.append(jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(params, x, zh, zl))
  for other in outs[1:]:
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(other)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  del args


@pytest.mark.parametrize("H,L", [(2, 2), (3, 1), (1, 3)])
def test_one_step_gradient_reaches_only_final_steps(H, L):
  params, l_step, h_step, x, zh, zl = _steps(jax.random.key(1))
  n = H * (L + 1)

  def f(probes):
    z_H, z_L = hrm.recurse_reference(l_step(params), h_step(params), x, zh, zl, H=H, L=L,
                                     probes=probes)
    return jnp.sum(z_H ** 2) + 0.5 * jnp.sum(z_L)

  g = jax.grad(f)(jnp.zeros((n,) + x.shape))
  norms = np.asarray(jnp.abs(g).reshape(n, -1).max(-1))
  # Step order: L steps then the H step, per cycle; the last two are the final L and H updates.
  assert np.all(norms[:-2] == 0.0), norms
  assert norms[-2] > 0 and norms[-1] > 0, norms

  # Full backprop reaches every step: the probes do test something.
  def f_full(probes):
    z_H, z_L = hrm.recurse_reference(l_step(params), h_step(params), x, zh, zl, H=H, L=L,
                                     one_step_grad=False, probes=probes)
    return jnp.sum(z_H ** 2) + 0.5 * jnp.sum(z_L)
  g_full = jax.grad(f_full)(jnp.zeros((n,) + x.shape))
  assert np.all(np.asarray(jnp.abs(g_full).reshape(n, -1).max(-1)) > 0)


def test_one_step_gradient_of_scanned_core_ignores_initial_state():
  params, l_step, h_step, x, zh, zl = _steps(jax.random.key(2))
  f = lambda zh, zl, x: _loss(hrm.recurse, params, l_step, h_step, x, zh, zl, H=3, L=2)
  g_zh, g_zl, g_x = jax.grad(f, argnums=(0, 1, 2))(zh, zl, x)
  assert float(jnp.abs(g_zh).max()) == 0.0 and float(jnp.abs(g_zl).max()) == 0.0
  assert float(jnp.abs(g_x).max()) > 0.0
  # x's gradient is the final L step's only: x detached in every other step gives the same.
  def f_final_x_only(x_final):
    l, h = l_step(params), h_step(params)
    z_H, z_L = hrm.recurse(l, h, jax.lax.stop_gradient(x), zh, zl, H=3, L=2)
    del z_H
    z_H2, z_L2 = hrm.recurse_reference(l, h, x_final, zh, zl, H=3, L=2)
    return jnp.sum(z_H2 ** 2) + 0.5 * jnp.sum(z_L2)
  np.testing.assert_allclose(jax.grad(f_final_x_only)(x), g_x, rtol=1e-5, atol=1e-6)


def test_hrm_core_module_scan_equals_unroll_and_compiles_once_per_shape():
  core = hrm.HRMCore(16, 2, 32, h_layers=1, l_layers=1, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(core)
  x = jax.random.normal(jax.random.key(3), (2, 5, 16))

  @jax.jit
  def run(state, x):
    core = nnx.merge(graphdef, state)
    carry = core.init_carry(2, 5)
    return (core(x, carry, H=3, L=2, causal=True),
            core(x, carry, H=3, L=2, causal=True, unroll=True))

  a, b = run(state, x)
  np.testing.assert_allclose(a.z_H_BxTxD, b.z_H_BxTxD, rtol=1e-5, atol=1e-5)
  # Causal: the first positions do not depend on later tokens.
  c, _ = run(state, x.at[:, 3:].set(0.0))
  np.testing.assert_allclose(a.z_H_BxTxD[:, :3], c.z_H_BxTxD[:, :3], rtol=1e-5, atol=1e-5)


def test_deep_supervision_detaches_carry_between_segments():
  w = jnp.array(0.7)

  def total(w, c0):
    seg = lambda c: (jnp.tanh(w * c + 1.0), jnp.tanh(w * c + 1.0))
    _, outs = hrm.deep_supervision(seg, c0, 3)
    return outs.sum()

  c0 = jnp.array(0.3)
  assert float(jax.grad(total, argnums=1)(w, c0)) == 0.0
  # d/dw: each segment's output differentiated at its own (detached) input.
  cs, g = [c0], 0.0
  for _ in range(3):
    c = cs[-1]
    g += (1 - jnp.tanh(w * c + 1.0) ** 2) * c
    cs.append(jnp.tanh(w * c + 1.0))
  np.testing.assert_allclose(jax.grad(total)(w, c0), g, rtol=1e-6)


def test_bad_sizes_raise():
  with pytest.raises(ValueError, match="H >= 1"):
    hrm.recurse(lambda *a: a[0], lambda *a: a[0], 0.0, 0.0, 0.0, H=0, L=1)
  with pytest.raises(ValueError, match="not divisible"):
    hrm.Block(30, 4, 32, rngs=nnx.Rngs(0))


def test_act_targets_follow_hrm_q_learning():
  q_h = jnp.array([[0.0], [2.0], [-1.0]])       # S=3 segments, B=1
  q_c = jnp.array([[1.0], [-3.0], [5.0]])
  correct = jnp.array([[False], [True], [True]])
  t_halt, t_cont = hrm.act_targets(q_h, q_c, correct)
  np.testing.assert_array_equal(t_halt[:, 0], [0.0, 1.0, 1.0])
  # continue at s: sigmoid(max(q_halt, q_cont) at s+1); at the segment before the cap,
  # the cap's halt value; at the cap nothing.
  np.testing.assert_allclose(t_cont[:, 0], [jax.nn.sigmoid(2.0), jax.nn.sigmoid(-1.0), 0.0],
                             rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_mlp_equals_plain_linears_forward_and_grad(dtype):
  """hrm.MLP (up on memjax.layers.dense's matmul, issue 16): the same values and
  gradients as down(gelu(up(x))) with plain nnx.Linears."""
  mlp = hrm.MLP(8, 12, rngs=nnx.Rngs(0))
  g, p = nnx.split(mlp, nnx.Param)
  x = jax.random.normal(jax.random.key(1), (3, 5, 8)).astype(dtype)
  w = jax.random.normal(jax.random.key(2), (3, 5, 8))
  assert mlp.up.dot_general is dense.dot_general

  def token_major(p, x):
    up, down = p["up"]["kernel"][...], p["down"]["kernel"][...]   # float32: x is promoted
    return jax.nn.gelu(x.astype(up.dtype) @ up, approximate=True) @ down

  def loss(apply, p, x):
    y = apply(p, x)
    return (y.astype(jnp.float32) * w).sum(), y

  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  (_, ya), (dpa, dxa) = jax.value_and_grad(loss, (1, 2), has_aux=True)(token_major, p, x)
  (_, yb), (dpb, dxb) = jax.value_and_grad(loss, (1, 2), has_aux=True)(
      lambda p, x: nnx.merge(g, p)(x), p, x)
  assert yb.dtype == ya.dtype and yb.shape == ya.shape
  np.testing.assert_allclose(np.float32(yb), np.float32(ya), **tol)
  np.testing.assert_allclose(np.float32(dxb), np.float32(dxa), **tol)
  for u, v in zip(jax.tree.leaves(dpb), jax.tree.leaves(dpa)):
    np.testing.assert_allclose(np.float32(u), np.float32(v), **tol)
