"""Issue 16: each faster path of the THEN step equals the path it replaced, forward and
gradients, on tiny shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import then_recall
from memjax.core import losses
from memjax.core import tasks
from memjax.core import tbptt
from memjax.data.recall import AssocRecall
from memjax.then import model as then
from memjax.then import system as then_system
from memjax.then import traces


def _setup(**model):
  c = then_recall.get_config("tiny")
  c.model.update(model)
  task = tasks.make_task(c.task)
  m = then.ThenModel(c, task.vocab_size, task.segment_len)
  batch = jax.tree.map(jnp.asarray, next(iter(task.batches("train", 4, 0))))
  return m, m.init_params(jax.random.key(0)), batch


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("truncate_every", [0, 2])
def test_unrolled_segments_equal_the_scan(truncate_every):
  """The default (3 segments: unrolled) equals the scan: logits, state, loss and gradients."""
  m, params, batch = _setup()
  assert batch["inputs"].shape[1] // m.segment_len <= tbptt.UNROLL_UP_TO

  def loss(params, unroll):
    logits, state = m.run(params, m.init_state(4), batch["inputs"],
                          truncate_every=truncate_every, unroll=unroll)
    return (logits ** 2).mean() + state.traces.keys_BxLxCxKxD.sum(), (logits, state)

  g = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (l_scan, out_scan), g_scan = g(params, False)
  (l_def, out_def), g_def = g(params, None)
  np.testing.assert_allclose(l_def, l_scan, rtol=1e-6)
  _assert_trees_close(out_def, out_scan)
  _assert_trees_close(g_def, g_scan, rtol=1e-4, atol=1e-6)


def test_long_segment_loops_stay_a_scan():
  """Past UNROLL_UP_TO segments the loop is a scan (compile time does not grow with it)."""
  apply = lambda mem, seg: (mem + seg, seg)
  jaxpr = lambda n: str(jax.make_jaxpr(lambda s: tbptt.run_segments(apply, jnp.zeros(2), s))(
      jnp.ones((n, 2))))
  assert f"unroll={tbptt.UNROLL_UP_TO}" in jaxpr(tbptt.UNROLL_UP_TO)
  assert "unroll=1" in jaxpr(tbptt.UNROLL_UP_TO + 1)


def _write_onehot(mem, keys, values, write_B=None):
  """The write this replaced: one-hot placement over the C slots."""
  c, s = mem.capacity, keys.shape[2]
  if s > c:
    keys, values = keys[:, :, -c:], values[:, :, -c:]
    mem = mem.replace(cursor_B=mem.cursor_B + (s - c))
    s = c
  onehot = jax.nn.one_hot((mem.cursor_B[:, None] + jnp.arange(s)) % c, c, dtype=keys.dtype)
  hit = onehot.sum(1) > 0
  if write_B is not None:
    hit &= write_B[:, None]
  sel = hit[:, None, :, None, None]
  cursor = mem.cursor_B + s if write_B is None else jnp.where(write_B, mem.cursor_B + s, mem.cursor_B)
  return traces.TraceMemory(
      jnp.where(sel, jnp.einsum("bsc,blskd->blckd", onehot, keys), mem.keys_BxLxCxKxD),
      jnp.where(sel, jnp.einsum("bsc,blskd->blckd", onehot, values), mem.values_BxLxCxKxD),
      mem.valid_BxC | hit, cursor % c)


@pytest.mark.parametrize("s", [1, 3, 6, 9])
def test_trace_write_equals_one_hot_placement(s):
  """The gather write equals the one-hot matmul it replaced: every slot, flag and cursor, and
  the gradients into the old buffer and the new keys/values; rows at different cursors,
  wrapping around, incognito rows, and more traces than slots (s = 9 > C = 6)."""
  b, l, c, k, d = 3, 2, 6, 2, 4
  r = jax.random.split(jax.random.key(1), 4)
  mem = traces.TraceMemory(jax.random.normal(r[0], (b, l, c, k, d)),
                           jax.random.normal(r[1], (b, l, c, k, d)),
                           jnp.array([[True] * c, [False] * c, [True, False] * 3]),
                           jnp.array([0, 4, 5], jnp.int32))
  keys = jax.random.normal(r[2], (b, l, s, k, d))
  values = jax.random.normal(r[3], (b, l, s, k, d))
  w = jax.random.normal(jax.random.key(2), (b, l, c, k, d))
  for write_B in (None, jnp.array([True, False, True])):
    def f(fn, old_k, old_v, keys, values):
      out = fn(mem.replace(keys_BxLxCxKxD=old_k, values_BxLxCxKxD=old_v), keys, values, write_B)
      return ((out.keys_BxLxCxKxD * w).sum() + (out.values_BxLxCxKxD * w ** 2).sum(), out)
    args = (mem.keys_BxLxCxKxD, mem.values_BxLxCxKxD, keys, values)
    (l_new, new), g_new = jax.value_and_grad(f, (1, 2, 3, 4), has_aux=True)(traces.write, *args)
    (l_old, old), g_old = jax.value_and_grad(f, (1, 2, 3, 4), has_aux=True)(_write_onehot, *args)
    np.testing.assert_allclose(l_new, l_old, rtol=1e-6)
    assert jax.tree.all(jax.tree.map(np.array_equal, new, old))
    _assert_trees_close(g_new, g_old, rtol=1e-6, atol=0)


def test_predicts_equals_argmax_with_ties():
  """losses.predicts == (argmax == target), ties included (argmax takes the first maximum)."""
  logits = jax.random.randint(jax.random.key(0), (4, 50, 7), 0, 3).astype(jnp.float32)
  targets = jax.random.randint(jax.random.key(1), (4, 50), 0, 7)
  want = jnp.argmax(logits, -1) == targets
  np.testing.assert_array_equal(losses.predicts(logits, targets), want)
  assert 0 < int(want.sum()) < want.size
  logits = jax.random.normal(jax.random.key(2), (4, 50, 353))
  targets = jnp.argmax(logits, -1).at[:, ::2].set(3)
  np.testing.assert_array_equal(losses.predicts(logits, targets), jnp.argmax(logits, -1) == targets)


class _AnswersAnywhere(AssocRecall):
  answer_tail = None   # says nothing of where its answers lie: THEN's loss takes a cond per segment


@pytest.mark.parametrize("path,scored", [("tail", "task"), ("tail", "none"), ("cond", "task"),
                                         ("cond", "every segment"), ("cond", "none")])
def test_loss_with_head_on_scored_positions_equals_head_everywhere(path, scored):
  """THEN's training loss applies the head only where a position can be scored: on the task's
  answer tail (no cond), or, for a task that does not say, on segments holding a scored
  position. Loss, accuracy, carried memory and gradients equal the head over every position."""
  c = then_recall.get_config("tiny")
  task = (tasks.make_task if path == "tail" else _AnswersAnywhere)(c.task)
  system = then_system.make_system(c, task)
  m, params, batch = _setup()
  jaxpr = str(jax.make_jaxpr(system.loss)(params, batch, m.init_state(4), (), None))
  assert ("cond[" in jaxpr) == (path == "cond")
  if scored == "every segment":   # an answer id in each segment, one spanning two segments
    a = np.array(batch["answer"])
    s = m.segment_len
    a[:, 1], a[:, s - 1], a[:, s], a[:, 2 * s + 1] = 1, 2, 2, 3
    batch = dict(batch, answer=jnp.asarray(a))
  elif scored == "none":
    batch = dict(batch, answer=jnp.zeros_like(batch["answer"]))

  def old_loss(params):
    logits, state = m.run(params, m.init_state(4), batch["inputs"])
    l = losses.answer_loss(logits, batch["targets"], batch["answer"])
    correct, count = losses.answer_accuracy(logits, batch["targets"], batch["answer"],
                                            task.max_answers)
    return l, (correct / jnp.maximum(count, 1.0), state)

  def new_loss(params):
    l, (metrics, state, _) = system.loss(params, batch, m.init_state(4), (), None)
    return l, (metrics["accuracy"], state)

  (l_old, out_old), g_old = jax.jit(jax.value_and_grad(old_loss, has_aux=True))(params)
  (l_new, out_new), g_new = jax.jit(jax.value_and_grad(new_loss, has_aux=True))(params)
  np.testing.assert_allclose(l_new, l_old, rtol=1e-6)
  _assert_trees_close(out_new, out_old)
  _assert_trees_close(g_new, g_old, rtol=1e-5, atol=1e-7)
  if scored == "none":
    assert float(l_new) == 0.0
