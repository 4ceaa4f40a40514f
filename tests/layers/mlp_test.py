"""GatedMLP: token-blocked application equals applying it at once; the fused gate/up matmul
(with either dot_general) equals the plain form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax.layers import GatedMLP, blockwise, dense


@pytest.mark.parametrize("n, block", [(45, 8), (64, 16), (10, 16), (10, 0)])
def test_blockwise_equals_direct_forward_and_grads(n, block):
  mlp = GatedMLP(8, 32, rngs=nnx.Rngs(0))
  g, p = nnx.split(mlp, nnx.Param)
  x = jax.random.normal(jax.random.key(n), (2, n, 8))
  w = jax.random.normal(jax.random.key(1), (2, n, 8))
  f = lambda p, x, blk: (blockwise(nnx.merge(g, p), x, blk) * w).sum()
  np.testing.assert_allclose(blockwise(mlp, x, block), mlp(x), atol=1e-6)
  got = jax.jit(jax.grad(f, (0, 1)), static_argnums=2)(p, x, block)
  want = jax.grad(f, (0, 1))(p, x, 0)
  # Parameter gradients sum over all tokens; blocked, that sum runs in another order, so
  # compare within ~100 float32 ulp of the largest entry (an entry near 0 gets no rtol slack).
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("dot_general", [jax.lax.dot_general, dense.dot_general])
def test_fused_gate_up_equals_plain_forward_and_grad(act, dtype, dot_general):
  """GatedMLP(fuse_gate_up=True) (issue 16), with lax's or memjax.layers.dense's dot_general:
  the same parameters, values and gradients as the plain form."""
  a = GatedMLP(8, 12, act=act, rngs=nnx.Rngs(0))
  b = GatedMLP(8, 12, act=act, rngs=nnx.Rngs(0), fuse_gate_up=True, dot_general=dot_general)
  ga, pa = nnx.split(a, nnx.Param)
  gb, pb = nnx.split(b, nnx.Param)
  assert jax.tree.structure(pa) == jax.tree.structure(pb)
  x = jax.random.normal(jax.random.key(1), (3, 5, 8)).astype(dtype)
  w = jax.random.normal(jax.random.key(2), (3, 5, 8))

  def f(g, p, x):
    y = nnx.merge(g, p)(x)
    return (y.astype(jnp.float32) * w).sum(), y

  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  (la, ya), (dpa, dxa) = jax.value_and_grad(f, (1, 2), has_aux=True)(ga, pa, x)
  (lb, yb), (dpb, dxb) = jax.value_and_grad(f, (1, 2), has_aux=True)(gb, pa, x)
  assert yb.dtype == ya.dtype and yb.shape == ya.shape
  np.testing.assert_allclose(np.float32(yb), np.float32(ya), **tol)
  np.testing.assert_allclose(np.float32(dxb), np.float32(dxa), **tol)
  for u, v in zip(jax.tree.leaves(dpb), jax.tree.leaves(dpa)):
    np.testing.assert_allclose(np.float32(u), np.float32(v), **tol)


def test_fused_gate_up_rejects_bias():
  with pytest.raises(ValueError, match="no bias"):
    GatedMLP(8, 12, use_bias=True, fuse_gate_up=True, rngs=nnx.Rngs(0))
