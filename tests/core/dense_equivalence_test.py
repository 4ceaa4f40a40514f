"""Issue 16: every design trained in memjax computes its Linears with memjax.layers.dense
(weight gradients over a materialised transpose); its training loss, metrics, carried memory
and gradients equal the same system built with lax.dot_general, on its tiny config."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.core import loop
from memjax.core import system as system_lib
from memjax.layers import dense

CONFIGS = {   # design -> (config module, variant)
    "then": ("then_recall", "tiny"),
    "hrsa_trm": ("hrsa_retrieval", "tiny"),
    "hrm": ("hrm_reasoning", "tiny"),
    "hrrm_planner": ("hrrm_planner", "tiny"),
    "hrrm_reasoner": ("hrrm_reasoner", "tiny"),
    "hrrm_memory": ("titans_recall", "tiny"),
}


def _loss_and_grads(name):
  module, variant = CONFIGS[name]
  c = importlib.import_module(f"configs.{module}").get_config(variant)
  c.train.batch_size = 4
  task, system, tx = loop.build(c)
  state = loop.init_state(c, system, tx)
  batch = jax.tree.map(jnp.asarray, next(iter(task.batches("train", 4, 0))))
  loss = system_lib.bind(system, system.frozen).loss
  f = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (l, (metrics, memory, _)), g = f(state.params, batch, state.memory, state.aux,
                                   state.step_key())
  barrier = "optimization_barrier" in str(jax.make_jaxpr(jax.grad(
      lambda p: loss(p, batch, state.memory, state.aux, state.step_key())[0]))(state.params))
  return l, metrics, memory, g, barrier


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dense_linears_equal_plain_dot_general(name, monkeypatch):
  fast = _loss_and_grads(name)
  monkeypatch.setattr(dense, "dot_general", jax.lax.dot_general)
  plain = _loss_and_grads(name)
  assert fast[4] and not plain[4], "the dense weight gradient is not (only) in the fast build"
  np.testing.assert_allclose(fast[0], plain[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(fast[1:4]), jax.tree.leaves(plain[1:4])):
    np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=1e-4,
                               atol=1e-5 * max(1.0, float(np.abs(np.float32(b)).max())))
