"""Diffusion memory: scan == unrolled loop, cascade validation, schedule, state pytree."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax.core import memory as memory_lib
from memjax.hrsa import diffusion


def _cascade(steps, slots=(2, 4)):
  return diffusion.DiffusionCascade(slots, 8, 2, steps=steps, trm_n=2, trm_cycles=2,
                                    rngs=nnx.Rngs(0))


def test_denoise_scan_equals_unrolled_loop():
  casc = _cascade(3)
  enc = jax.random.normal(jax.random.key(1), (2, 12, 8))
  rng = jax.random.key(2)
  mem_scan, reads_scan = casc(enc, rng)
  mem_loop, reads_loop = casc(enc, rng, unroll=True)
  for a, b in zip(mem_scan.levels, mem_loop.levels):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for a, b in zip(reads_scan, reads_loop):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert [m.shape for m in mem_scan.levels] == [(2, 2, 8), (2, 4, 8)]


def test_denoise_grads_scan_equal_unrolled():
  casc = _cascade(2, slots=(2,))
  g, p = nnx.split(casc, nnx.Param)
  enc = jax.random.normal(jax.random.key(1), (2, 8, 8))
  f = lambda p, unroll: nnx.merge(g, p)(enc, jax.random.key(3), unroll=unroll)[0].levels[-1].sum()
  ga = jax.jit(jax.grad(f), static_argnums=1)(p, False)
  gb = jax.jit(jax.grad(f), static_argnums=1)(p, True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), ga, gb)


@pytest.mark.parametrize("slots", [(4, 2), (2, 3), (0, 4), ()])
def test_invalid_cascade_raises(slots):
  with pytest.raises(ValueError, match="slots"):
    diffusion.check_cascade(slots)


def test_paper_cascade_is_valid():
  diffusion.check_cascade((256, 1024, 2048))


@pytest.mark.parametrize("kind", diffusion.SCHEDULES)
def test_schedule_starts_at_max_ends_at_zero_and_falls(kind):
  s = np.asarray(diffusion.noise_schedule(5, 2.0, kind))
  assert s[0] == pytest.approx(2.0) and s[-1] == pytest.approx(0.0, abs=1e-6)
  assert np.all(np.diff(s) < 0)


def test_memory_follows_the_protocol():
  m = diffusion.DiffusionMemory((jnp.arange(6.0).reshape(3, 2, 1), jnp.ones((3, 4, 1))))
  assert len(jax.tree.leaves(m)) == 2
  assert float(jnp.abs(memory_lib.flat(memory_lib.zeroed(m))).sum()) == 0.0
  np.testing.assert_array_equal(memory_lib.shuffled(m).levels[0][1], m.levels[0][0])
  assert memory_lib.flat(m).shape == (3, 6)
