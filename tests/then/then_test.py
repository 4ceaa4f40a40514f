"""THEN: ring-buffer traces, ingest/query, disconnected memory, state files."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import then_recall
from memjax.core import memory as memory_lib
from memjax.core import tasks
from memjax.core import yardstick
from memjax.then import model as then
from memjax.then import system as then_system
from memjax.then import traces


def test_ring_buffer_overwrites_oldest():
  mem = traces.init(1, 1, 4, 1, 1)
  kv = lambda a: jnp.asarray(a, jnp.float32).reshape(1, 1, -1, 1, 1)
  mem = traces.write(mem, kv([1, 2, 3]), kv([1, 2, 3]))
  mem = traces.write(mem, kv([4, 5]), kv([4, 5]))
  assert mem.keys_BxLxCxKxD[0, 0, :, 0, 0].tolist() == [5, 2, 3, 4]
  assert mem.valid_BxC.tolist() == [[True] * 4] and int(mem.cursor_B[0]) == 1
  mem = traces.write(mem, kv([6, 7, 8, 9, 10, 11]), kv([0] * 6))   # more than capacity
  assert sorted(mem.keys_BxLxCxKxD[0, 0, :, 0, 0].tolist()) == [8, 9, 10, 11]


def test_incognito_rows_are_not_written():
  mem = traces.init(2, 1, 4, 1, 1)
  ones = jnp.ones((2, 1, 2, 1, 1))
  mem = traces.write(mem, ones, ones, write_B=jnp.array([True, False]))
  assert mem.valid_BxC[0].sum() == 2 and mem.valid_BxC[1].sum() == 0
  assert mem.cursor_B.tolist() == [2, 0]


def _system(**model):
  c = then_recall.get_config("tiny")
  c.model.update(model)
  task = tasks.make_task(c.task)
  return c, task, then.ThenModel(c, task.vocab_size, task.segment_len), then_system.make_system(c, task)


def test_ingest_then_query_equals_one_run():
  c, task, model, _ = _system()
  params = model.init_params(jax.random.key(0))
  x = jnp.asarray(next(iter(task.batches("train", 4, 0)))["inputs"])
  s = task.segment_len
  logits, _ = model.run(params, model.init_state(4), x)
  state = model.ingest(params, model.init_state(4), x[:, :-s])
  last, _ = model.query(params, state, x[:, -s:])
  np.testing.assert_allclose(last, logits[:, -s:], atol=1e-5)


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
  return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb))


def test_incognito_query_returns_the_whole_state_unchanged():
  c, task, model, _ = _system()
  params = model.init_params(jax.random.key(0))
  x = jnp.asarray(next(iter(task.batches("train", 2, 0)))["inputs"])
  state = model.ingest(params, model.init_state(2), x[:, :8])
  logits_inc, after = model.query(params, state, x[:, 8:16], incognito=True)
  assert _leaves_equal(state, after)   # traces, valid flags, cursor and shift tail
  logits, written = model.query(params, state, x[:, 8:16])
  assert not _leaves_equal(state, written)           # a normal query does write
  np.testing.assert_array_equal(logits_inc, logits)  # and both give the same answer


def test_zeroed_leaves_nothing_of_the_state():
  c, task, model, system = _system()
  params = model.init_params(jax.random.key(0))
  x = jnp.asarray(next(iter(task.batches("eval", 4, 0)))["inputs"])
  state = model.ingest(params, model.init_state(4), x[:, :8])
  # every leaf carries something after ingest: traces, flags, cursor, shift tail
  assert all(bool(jnp.any(x != 0)) for x in jax.tree.leaves(state))
  z = memory_lib.zeroed(state)
  for path, x in jax.tree_util.tree_leaves_with_path(z):
    assert not bool(jnp.any(x != 0)), f"{jax.tree_util.keystr(path)} survives zeroed"
  assert _leaves_equal(z, model.init_state(4))   # zeroed is the empty memory


def test_disconnected_memory_gives_zeroed_accuracy_equal_to_accuracy():
  c, task, _, system = _system(read_memory=False)
  params = system.init(jax.random.key(0))
  batch = jax.tree.map(jnp.asarray, next(iter(task.batches("eval", 8, 0))))
  out = yardstick.mode_outputs(system, params, batch)
  assert float(out["zeroed"]["correct"]) == float(out["memory"]["correct"])
  assert float(out["shuffled"]["correct"]) == float(out["memory"]["correct"])
  np.testing.assert_allclose(out["zeroed"]["loss"], out["memory"]["loss"], rtol=1e-6)




def test_stream_batches_carry_memory_like_one_long_pass():
  """Segmented training across batches (memory carried in the state) equals one long pass."""
  c, task, model, system = _system()
  from memjax.data import recall as recall_lib
  stream_config = c.task.copy_and_resolve_references()
  stream_config.stream_segments = 1
  stream_task = recall_lib.AssocRecall(stream_config)
  params = system.init(jax.random.key(0))
  it = iter(stream_task.batches("train", 4, 0))
  chunks = [jax.tree.map(jnp.asarray, next(it)) for _ in range(task.num_segments)]
  assert bool(chunks[0]["reset"].all()) and not bool(chunks[1]["reset"].any())
  whole = jax.tree.map(jnp.asarray, next(iter(task.batches("train", 4, 0))))
  np.testing.assert_array_equal(jnp.concatenate([ch["inputs"] for ch in chunks], 1), whole["inputs"])
  memory = system.init_memory(4)
  for ch in chunks:
    loss_chunk, (_, memory, _) = system.loss(params, ch, memory, (), None)
  loss_whole, _ = system.loss(params, whole, system.init_memory(4), (), None)
  np.testing.assert_allclose(loss_chunk, loss_whole, rtol=1e-5)   # answers: last chunk only
