"""Chunked local attention (the O(N) jnp reference) equals masked dense attention; the blocked
path equals the reference."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from memjax.layers import (attend, local_attention, local_attention_blocked,
                           local_attention_reference, local_mask)

# The module, not the function of the same name that memjax.layers exports.
local_lib = importlib.import_module("memjax.layers.local_attention")


@settings(max_examples=6, deadline=None)
@given(t=st.integers(1, 40), chunk=st.integers(1, 16), halo=st.integers(0, 20),
       kv=st.sampled_from([1, 2]), groups=st.sampled_from([1, 2]))
def test_equals_masked_dense(t, chunk, halo, kv, groups):
  ks = jax.random.split(jax.random.key(t * 31 + chunk), 3)
  q = jax.random.normal(ks[0], (2, t, kv * groups, 8))
  k = jax.random.normal(ks[1], (2, t, kv, 8))
  v = jax.random.normal(ks[2], (2, t, kv, 8))
  mask = jnp.broadcast_to(local_mask(t, t, chunk=chunk, halo=halo), (2, t, t))
  # Jitted: op-by-op dispatch compiles every primitive for each drawn shape (10x slower).
  want = jax.jit(attend)(q, k, v, mask)
  got = jax.jit(local_attention_reference, static_argnames=("chunk", "halo"))(
      q, k, v, chunk=chunk, halo=halo)
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_gradients_equal_masked_dense():
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (1, 21, 2, 4)) for kk in ks)
  mask = jnp.broadcast_to(local_mask(21, 21, chunk=4, halo=6), (1, 21, 21))
  f = lambda q, k, v: (local_attention_reference(q, k, v, chunk=4, halo=6) ** 2).sum()
  g = lambda q, k, v: (attend(q, k, v, mask) ** 2).sum()
  for a, b in zip(jax.grad(f, (0, 1, 2))(q, k, v), jax.grad(g, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_backend_switch_reference_on_cpu():
  q = k = v = jnp.ones((1, 8, 1, 4))
  np.testing.assert_array_equal(local_attention(q, k, v, chunk=4, halo=2, backend="reference"),
                                local_attention(q, k, v, chunk=4, halo=2, backend="auto"))


@pytest.mark.slow   # ~54 s on the 2-core CPU; .ci/run's slow line runs it by name
@settings(max_examples=6, deadline=None)
@given(t=st.integers(1, 70), chunk=st.integers(1, 16), halo=st.integers(0, 20),
       kv=st.sampled_from([1, 2]), groups=st.sampled_from([1, 3]),
       block=st.integers(1, 5))
def test_blocked_equals_reference_forward_and_grads(t, chunk, halo, kv, groups, block):
  ks = jax.random.split(jax.random.key(t * 7 + chunk * 3 + block), 4)
  q = jax.random.normal(ks[0], (2, t, kv * groups, 8))
  k = jax.random.normal(ks[1], (2, t, kv, 8))
  v = jax.random.normal(ks[2], (2, t, kv, 8))
  w = jax.random.normal(ks[3], q.shape)   # a random cotangent, so every output element counts
  ref = lambda q, k, v: local_attention_reference(q, k, v, chunk=chunk, halo=halo)
  blk = lambda q, k, v: local_attention_blocked(q, k, v, chunk=chunk, halo=halo,
                                                block_chunks=block)
  np.testing.assert_allclose(jax.jit(blk)(q, k, v), ref(q, k, v), atol=2e-6)
  loss = lambda f: lambda q, k, v: (f(q, k, v) * w).sum()
  for a, b in zip(jax.jit(jax.grad(loss(blk), (0, 1, 2)))(q, k, v),
                  jax.grad(loss(ref), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_auto_takes_the_blocked_path_past_the_cache_threshold(monkeypatch):
  q = jax.random.normal(jax.random.key(1), (1, 64, 2, 8))
  small = local_lib.score_bytes(q, 8, 8)
  assert small == 4 * 1 * 2 * 8 * 8 * 16        # batch x heads x chunks x chunk x window
  assert local_lib.choose_backend(q, 8, 8) == "reference"
  monkeypatch.setattr(local_lib, "BLOCKED_ABOVE_BYTES", small - 1)
  assert local_lib.choose_backend(q, 8, 8) == "blocked"
  np.testing.assert_array_equal(local_attention(q, q, q, chunk=8, halo=8, backend="auto"),
                                local_attention(q, q, q, chunk=8, halo=8, backend="blocked"))


@pytest.mark.parametrize("kw, field", [
    (dict(chunk=0, halo=1), "chunk"), (dict(chunk=4, halo=-1), "halo"),
    (dict(chunk=4, halo=1, backend="cuda"), "backend")])
def test_bad_arguments_name_the_argument(kw, field):
  q = k = v = jnp.ones((1, 8, 1, 4))
  with pytest.raises(ValueError, match=field):
    local_attention(q, k, v, **kw)
  with pytest.raises(ValueError, match="block_chunks"):
    local_attention_blocked(q, k, v, chunk=4, halo=1, block_chunks=0)


def test_cost_grows_linearly():
  """The reference's score blocks: N/chunk blocks of chunk x (chunk + halo), not N x N."""
  q = jax.ShapeDtypeStruct((1, 4096, 1, 8), jnp.float32)
  f = lambda q: local_attention_reference(q, q, q, chunk=64, halo=64)
  flops = lambda n: jax.jit(f).lower(jax.ShapeDtypeStruct((1, n, 1, 8), jnp.float32)).compile().cost_analysis()["flops"]
  del q
  assert flops(4096) / flops(1024) < 4.5
