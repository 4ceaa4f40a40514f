"""Token-blocked application of a per-token function equals applying it at once."""
import jax
import numpy as np
import pytest
from flax import nnx

from memjax.layers import GatedMLP, blockwise


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
