"""The compiled step's `finite`: loss, gradients, parameters and optimizer state."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax.core.state import TrainState
from memjax.core.step import all_finite
from memjax.core.step import make_multi_step
from memjax.core.step import make_train_step


def _loss(params, batch, memory, aux, rng):
  del rng
  # Linear in w: the loss and gradient of a step are finite whatever the parameters' size.
  return jnp.sum(params["w"] * batch), ({}, memory, aux)


def _run(tx, batches_KxN):
  params = {"w": jnp.ones((3,), jnp.float32)}
  state = TrainState.create(params, tx, jax.random.key(0))
  step = jax.jit(make_multi_step(make_train_step(_loss, tx)))
  return step(state, batches_KxN)


def test_finite_for_a_normal_step():
  state, m = _run(optax.sgd(0.1), jnp.ones((2, 3)))
  assert bool(m["finite"]) and np.isfinite(np.asarray(state.params["w"])).all()


def test_non_finite_parameters_with_finite_loss_and_gradient_are_caught():
  # lr = 3e38 (finite in float32, passes validation): the step's loss (6) and gradient (2s)
  # are finite, its update is not: w = 1 - 3e38 * 2 overflows to -inf. A check of loss and
  # gradient norm alone (the old one) called this step finite and saved it.
  state, m = _run(optax.sgd(3e38), jnp.ones((1, 3)) * 2.0)
  assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
  assert not np.isfinite(np.asarray(state.params["w"])).all()
  assert not bool(m["finite"])


def _exploding_state():
  """Passes updates through; its own state (a float) overflows to inf on the first update."""
  return optax.GradientTransformation(lambda params: jnp.float32(1e38),
                                      lambda updates, state, params=None: (updates, state * 10))


def test_non_finite_optimizer_state_is_caught():
  # Loss, gradient and parameters all finite; only the optimizer's state is inf. A resumed run
  # would start from it (e.g. Adam's second moment overflowing freezes its parameter).
  state, m = _run(optax.chain(optax.sgd(0.1), _exploding_state()), jnp.ones((1, 3)))
  assert np.isfinite(np.asarray(state.params["w"])).all()
  assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
  assert not bool(m["finite"])


def test_all_finite_ignores_integers():
  assert bool(all_finite({"a": jnp.ones(2), "n": jnp.arange(3)}))
  assert not bool(all_finite({"a": jnp.array([1.0, jnp.nan])}))
  assert bool(all_finite(()))
