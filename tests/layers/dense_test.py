"""memjax.layers.dense: the matmul with the materialised-transpose weight gradient equals x @ w,
forward and gradients, and as nnx.Linear's dot_general equals the plain Linear."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax.layers import dense


def _tol(dtype):
  return dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matmul_equals_plain_forward_and_grad(shape, dtype):
  x = jax.random.normal(jax.random.key(0), shape).astype(dtype)
  w = jax.random.normal(jax.random.key(1), (5, 6)).astype(dtype)
  c = jax.random.normal(jax.random.key(2), shape[:-1] + (6,))

  def f(mm, x, w):
    y = mm(x, w)
    return (y.astype(jnp.float32) * c).sum(), y

  (la, ya), (dxa, dwa) = jax.jit(jax.value_and_grad(lambda x, w: f(jnp.matmul, x, w), (0, 1),
                                                    has_aux=True))(x, w)
  (lb, yb), (dxb, dwb) = jax.jit(jax.value_and_grad(lambda x, w: f(dense.matmul, x, w), (0, 1),
                                                    has_aux=True))(x, w)
  assert (yb.dtype, dxb.dtype, dwb.dtype) == (ya.dtype, dxa.dtype, dwa.dtype)
  assert dwb.shape == w.shape and dxb.shape == x.shape
  for a, b in [(ya, yb), (dxa, dxb), (dwa, dwb)]:
    np.testing.assert_allclose(np.float32(b), np.float32(a), **_tol(dtype))
  # the weight gradient is not trivially small: the check above can fail
  assert float(jnp.abs(dwa.astype(jnp.float32)).max()) > 1.0


def test_dot_general_takes_matmul_only_for_a_linear_contraction():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4))
  w = jax.random.normal(jax.random.key(1), (4, 5))
  plain = (((2,), (0,)), ((), ()))
  jaxpr = str(jax.make_jaxpr(lambda x, w: dense.dot_general(x, w, plain))(x, w))
  assert "custom_vjp_call" in jaxpr
  other = (((1,), (0,)), ((), ()))                 # contracts x's axis 1 with w[3, ...]
  v = jax.random.normal(jax.random.key(2), (3, 5))
  jaxpr = str(jax.make_jaxpr(lambda x, v: dense.dot_general(x, v, other))(x, v))
  assert "custom_vjp_call" not in jaxpr
  np.testing.assert_allclose(dense.dot_general(x, v, other), jax.lax.dot_general(x, v, other),
                             rtol=1e-6)
  hi = dense.dot_general(x, w, plain, precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(hi, x @ w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_bias", [False, True])
def test_linear_with_dense_dot_general_equals_plain_linear(use_bias):
  a = nnx.Linear(6, 9, use_bias=use_bias, rngs=nnx.Rngs(0))
  b = nnx.Linear(6, 9, use_bias=use_bias, rngs=nnx.Rngs(0), dot_general=dense.dot_general)
  ga, pa = nnx.split(a, nnx.Param)
  gb, pb = nnx.split(b, nnx.Param)
  assert jax.tree.structure(pa) == jax.tree.structure(pb)
  x = jax.random.normal(jax.random.key(3), (2, 5, 6))
  c = jax.random.normal(jax.random.key(4), (2, 5, 9))
  f = lambda g, p, x: (nnx.merge(g, p)(x) * c).sum()
  la, (dpa, dxa) = jax.value_and_grad(f, (1, 2))(ga, pa, x)
  lb, (dpb, dxb) = jax.value_and_grad(f, (1, 2))(gb, pa, x)
  np.testing.assert_allclose(lb, la, rtol=1e-5)
  np.testing.assert_allclose(dxb, dxa, rtol=1e-5, atol=1e-6)
  for u, v in zip(jax.tree.leaves(dpb), jax.tree.leaves(dpa)):
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
