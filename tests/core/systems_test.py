"""Every registered system on the memory protocol: the yardstick's ablations reach its answer;
and each system memjax trains from scratch computes its Linears with memjax.layers.dense
(issue 16): training loss, metrics, carried memory and gradients equal the same system built
with lax.dot_general.

For each system: on an untrained model and one generated batch, `zeroed` must change the
answer's loss relative to `memory` (so no system can silently skip an ablation), and
`shuffled` with batch size 1 must equal `memory` (the shuffle moves memories between
examples, nothing else). A system without a memory must say so (ingest None).
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.core import loop
from memjax.core import registry
from memjax.core import system as system_lib
from memjax.core import tasks
from memjax.core import yardstick
from memjax.layers import dense

# system name -> (config module, variant): a new system adds its tiny config here.
CONFIGS = {
    "then": ("then_recall", "tiny"),
    "hrsa_trm": ("hrsa_retrieval", "tiny"),
    "hrm": ("hrm_reasoning", "tiny"),
    "hrrm_planner": ("hrrm_planner", "tiny"),
    "hrrm_reasoner": ("hrrm_reasoner", "tiny"),
    "hrrm_memory": ("titans_recall", "tiny"),
    "latentem": ("latentem_kv", "tiny"),
}
WITHOUT_MEMORY = {"hrm", "hrrm_planner", "hrrm_reasoner"}
PRETRAINED = {"latentem"}   # a frozen pretrained reader: its Linears keep lax.dot_general


def test_every_registered_system_is_covered():
  assert set(CONFIGS) == set(registry.SYSTEMS)


def _build(name, batch_size):
  module, variant = CONFIGS[name]
  c = importlib.import_module(f"configs.{module}").get_config(variant)
  task = tasks.make_task(c.task)
  system = registry.make_system(c, task)
  system = system_lib.bind(system, system.frozen)   # frozen weights, where a system has them
  batch = jax.tree.map(jnp.asarray, next(iter(task.batches("eval", batch_size, 0))))
  return system, system.init(jax.random.key(0)), batch


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_yardstick_ablations_reach_the_answer(name):
  system, params, batch = _build(name, 4)
  out = yardstick.mode_outputs(system, params, batch)
  if name in WITHOUT_MEMORY:
    assert system.ingest is None and set(out) == {"memory"}
    return
  assert {"memory", "zeroed", "shuffled", "no_memory"} <= set(out)
  assert float(out["memory"]["count"]) > 0
  assert abs(float(out["zeroed"]["loss"]) - float(out["memory"]["loss"])) > 1e-6, \
      f"{name}: zeroing the memory does not change the answer"


@pytest.mark.parametrize("name", sorted(set(CONFIGS) - WITHOUT_MEMORY))
def test_shuffled_with_batch_one_equals_memory(name):
  system, params, batch = _build(name, 1)
  out = yardstick.mode_outputs(system, params, batch)
  for k in ("correct", "count", "loss"):
    np.testing.assert_array_equal(out["shuffled"][k], out["memory"][k])


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


@pytest.mark.parametrize("name", sorted(set(CONFIGS) - PRETRAINED))
def test_dense_linears_equal_plain_dot_general(name, monkeypatch):
  fast = _loss_and_grads(name)
  monkeypatch.setattr(dense, "dot_general", jax.lax.dot_general)
  plain = _loss_and_grads(name)
  assert fast[4] and not plain[4], "the dense weight gradient is not (only) in the fast build"
  np.testing.assert_allclose(fast[0], plain[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(fast[1:4]), jax.tree.leaves(plain[1:4])):
    np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=1e-4,
                               atol=1e-5 * max(1.0, float(np.abs(np.float32(b)).max())))
