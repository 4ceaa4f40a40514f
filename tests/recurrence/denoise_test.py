"""The shared denoise scan equals its unrolled loop, forward and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.recurrence import denoise as dn

TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", dn.SCHEDULES)
def test_schedule_falls_from_sigma_max(kind):
  s = np.asarray(dn.noise_schedule(6, 2.0, kind))
  assert s[0] == pytest.approx(2.0) and abs(s[-1]) < 1e-6 and np.all(np.diff(s) < 0)


def test_scan_equals_unrolled_loop_forward_and_grad():
  w = jax.random.normal(jax.random.key(0), (5, 5)) * 0.3
  noise = jax.random.normal(jax.random.key(1), (4, 2, 3, 5))      # T = 3
  sigmas = dn.noise_schedule(3)

  def run(w, unroll):
    def step(y, c, sigma):
      y = jnp.tanh(y @ w + sigma)
      return y, c + y.sum(), y.mean()
    y, c, aux = dn.denoise(step, noise, sigmas, jnp.float32(0), unroll=unroll)
    return (y ** 2).sum() + c + aux, (y, c, aux)

  (l1, out1), g1 = jax.jit(jax.value_and_grad(lambda w: run(w, False), has_aux=True))(w)
  (l2, out2), g2 = jax.jit(jax.value_and_grad(lambda w: run(w, True), has_aux=True))(w)
  for a, b in zip(out1, out2):
    np.testing.assert_allclose(a, b, **TOL)
  np.testing.assert_allclose(l1, l2, **TOL)
  np.testing.assert_allclose(g1, g2, **TOL)
  assert np.abs(np.asarray(g1)).sum() > 0


def test_last_estimate_is_not_renoised():
  """sigma_T = 0: the result is the last step's estimate, whatever the last noise draw."""
  sigmas = jnp.asarray([1.0, 0.5, 0.0])
  step = lambda y, c, s: (y * 0.5 + 1.0, c, None)
  a = dn.denoise(step, jnp.ones((3, 2)), sigmas)[0]
  b = dn.denoise(step, jnp.ones((3, 2)).at[2].set(100.0), sigmas)[0]
  np.testing.assert_allclose(a, b)
