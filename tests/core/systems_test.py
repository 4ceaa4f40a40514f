"""Every registered system on the memory protocol: the yardstick's ablations reach its answer.

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

from memjax.core import registry
from memjax.core import system as system_lib
from memjax.core import tasks
from memjax.core import yardstick

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
