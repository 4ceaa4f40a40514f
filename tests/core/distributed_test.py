"""Data parallel over 4 CPU devices: the sharded training step equals the unsharded one."""
import jax
import numpy as np

from configs import then_recall
from memjax.core import distributed
from memjax.core import loop


def test_sharded_step_equals_unsharded(tmp_path):
  assert jax.device_count() >= 4
  states = {}
  for dp in (1, 4):
    c = then_recall.get_config("tiny")
    c.train.update(steps=5, steps_per_call=5, checkpoint_every=0, data_parallel=dp)
    states[dp] = loop.train(c, str(tmp_path / f"dp{dp}"), progress=False,
                            evaluate_at_end=False)["state"]
  leaf = jax.tree.leaves(states[4].params)[0]
  assert len(leaf.sharding.device_set) == 4                  # it really ran on the mesh
  for a, b in zip(jax.tree.leaves(states[1].params), jax.tree.leaves(states[4].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_shard_batch_splits_the_batch_axis():
  mesh = distributed.make_mesh(4)
  x = distributed.shard_batch({"x": np.zeros((3, 8, 2))}, mesh, axis=1)["x"]
  assert {s.data.shape for s in x.addressable_shards} == {(3, 2, 2)}
