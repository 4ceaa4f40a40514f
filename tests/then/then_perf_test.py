"""Issue 16: each faster path of the THEN step equals the path it replaced, forward and
gradients, on tiny shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import then_recall
from memjax.core import tasks
from memjax.core import tbptt
from memjax.then import model as then


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
