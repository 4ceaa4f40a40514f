"""System.frozen: weights passed into the jitted step and the yardstick as an argument, never
trained, never in the train state."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax.core import yardstick
from memjax.core.state import TrainState
from memjax.core.step import make_train_step
from memjax.core.system import System, bind


def _system():
  frozen = {"w": jnp.asarray([2.0, -1.0, 0.5])}

  def loss(params, batch, memory, aux, rng, *, frozen):
    pred = params["a"] * frozen["w"]
    return ((pred - batch["y"]) ** 2).mean(), ({}, memory, aux)

  def answer(params, batch, memory, *, frozen):
    pred = params["a"] * frozen["w"] + (0.0 if memory is None else memory["m"])
    ok = jnp.abs(pred - batch["y"]) < 0.5
    return {"correct": ok.sum().astype(jnp.float32), "count": jnp.float32(ok.size),
            "loss": ((pred - batch["y"]) ** 2).mean()}

  def ingest(params, batch, *, frozen):
    return {"m": jnp.zeros_like(batch["y"])}

  return System(init=lambda rng: {"a": jnp.zeros(3)}, loss=loss, answer=answer, ingest=ingest,
                frozen=frozen)


def test_frozen_weights_reach_the_loss_but_get_no_state_and_no_update():
  system = _system()
  tx = optax.adam(0.1)
  state = TrainState.create(system.init(None), tx, jax.random.key(0))
  step = jax.jit(lambda s, b, f: make_train_step(bind(system, f).loss, tx)(s, b))
  batch = {"y": jnp.asarray([[2.0, -1.0, 0.5]])}
  before = jax.tree.map(np.asarray, system.frozen)
  for _ in range(3):
    state, metrics = step(state, batch, system.frozen)
  assert float(metrics["grad_norm/a"]) > 0
  assert float(jnp.abs(state.params["a"]).sum()) > 0
  n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
  assert n_opt == 2 * 3 + 1                         # adam mu, nu for `a` only, plus the count
  np.testing.assert_array_equal(before["w"], system.frozen["w"])
  assert bind(System(init=None, loss=None, answer=None), 1).frozen is None


def test_yardstick_passes_frozen():
  system = _system()
  r = yardstick.evaluate(system, {"a": jnp.ones(3)}, [{"y": jnp.asarray([[2.0, -1.0, 0.5]])}], 0.5)
  assert r["accuracy"] == 1.0 and r["accuracy_no_memory"] == 1.0
  hash(system)  # hashable: the yardstick caches its jitted modes per system
