"""Data parallel over 4 CPU devices: the sharded training step equals the unsharded one."""
import jax
import numpy as np
import pytest

from configs import then_recall
from memjax.core import distributed
from memjax.core import loop


@pytest.mark.slow   # ~22 s on the 2-core CPU; .ci/run's slow line runs it by name
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


def test_process_rows_concatenate_to_the_global_batch():
  """What each of two processes reads (rows=) is its half of the global batch, streams
  included, and the iterator state (the same in both) resumes where it stopped."""
  from memjax.core import tasks  # pylint: disable=g-import-not-at-top
  for stream in (0, 1):
    c = then_recall.get_config("tiny")
    c.task.stream_segments = stream
    task = tasks.make_task(c.task)
    whole = iter(task.batches("train", 8, 0))
    halves = [iter(task.batches("train", 8, 0, rows=r)) for r in ((0, 4), (4, 8))]
    for _ in range(4):
      w, a, b = next(whole), next(halves[0]), next(halves[1])
      assert w.keys() == a.keys()
      for k in w:
        np.testing.assert_array_equal(w[k], np.concatenate([a[k], b[k]]))
    assert halves[0].get_state() == halves[1].get_state()
    again = iter(task.batches("train", 8, 0, rows=(4, 8)))
    again.set_state(halves[1].get_state())
    np.testing.assert_array_equal(next(again)["inputs"], next(halves[1])["inputs"])


def test_local_batches_is_the_whole_batch_in_one_process():
  from memjax.core import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.make_task(then_recall.get_config("tiny").task)
  mesh = distributed.make_mesh(4)
  assert distributed.process_rows(mesh, 8) == (0, 8)
  got = next(iter(distributed.local_batches(task, "eval", 8, 0, mesh)))
  np.testing.assert_array_equal(got["inputs"], next(iter(task.batches("eval", 8, 0)))["inputs"])
