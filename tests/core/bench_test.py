"""experiments/bench_train.py and what it measures with: the jaxpr matmul count and the
step benchmark, on tiny configs."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import then_recall
from memjax.core import bench
from memjax.core import flops
from memjax.core import tasks
from memjax.then import model as then

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  return subprocess.run([sys.executable, "experiments/bench_train.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_matmul_count_of_dots_scans_conds_and_grads():
  a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
  f = lambda a, b: (a @ b).sum()
  assert flops.matmul_flops(f, a, b).flops == 2 * 8 * 16 * 4
  # the gradient in a: one more matmul of the same size
  assert flops.matmul_flops(jax.grad(f), a, b).flops == 2 * 2 * 8 * 16 * 4

  def scanned(a):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ jnp.ones((16, 16))), None), a, None,
                        length=5)[0].sum()
  assert flops.matmul_flops(scanned, a).flops == 5 * 2 * 8 * 16 * 16

  def cond(a, p):
    return jax.lax.cond(p, lambda: (a @ b).sum(), lambda: a.sum())
  assert flops.matmul_flops(cond, a, True).flops == 2 * 8 * 16 * 4   # the costliest branch


def test_then_analytic_count_agrees_with_the_traced_step():
  """then.flops_per_token, the head on the task's answer tail as the loss applies it, within
  15% of the traced matmuls of the step; it counts fewer than the head everywhere."""
  c = then_recall.get_config("tiny")
  c.model.update(heads=1, kv_heads=1)
  from memjax.core import loop  # pylint: disable=g-import-not-at-top
  task, system, tx = loop.build(c)
  state = loop.init_state(c, system, tx)
  batch = jax.tree.map(jnp.asarray, next(iter(task.batches("train", c.train.batch_size, 0))))
  traced, _ = bench.step_gflop(c, system, state, batch)
  fraction = task.answer_tail / batch["inputs"].shape[1]
  analytic = then.flops_per_token(c.model, task.vocab_size, task.segment_len,
                                  head_fraction=fraction) * batch["inputs"].size / 1e9
  assert abs(traced / analytic - 1) < 0.15, (traced, analytic)
  assert fraction < 1 and analytic < then.flops_per_token(
      c.model, task.vocab_size, task.segment_len) * batch["inputs"].size / 1e9


@pytest.mark.slow   # ~12 s on the 2-core CPU; .ci/run's slow line runs it by name
def test_bench_quick_prints_the_table():
  """The smoke test: THEN's tiny config, one call (every design: the slow test below)."""
  r = _run("--quick", "--designs=then")
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  head = next(i for i, l in enumerate(lines) if l.startswith("design"))
  assert lines[head].split() == ["design", "step", "ms", "CPU", "ms", "tokens/s", "GFLOP/step",
                                 "GFLOP/s", "MFU"]
  rows = {l.rsplit(None, 6)[0].strip(): l.split()[-6:] for l in lines[head + 1:head + 2]}
  assert set(rows) == {"then dim 32"}, lines
  for values in rows.values():
    assert all(float(v.replace(",", "")) > 0 for v in values), values


def test_bench_unknown_design_is_one_line():
  r = _run("--quick", "--designs=then,nope")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith("error: --designs: unknown design 'nope'")


@pytest.mark.slow
def test_bench_quick_every_design():
  r = _run("--quick", timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  for name in ("then dim 32", "hrsa", "titans", "hrm", "planner", "reasoner"):
    assert any(l.startswith(name) for l in r.stdout.splitlines()), r.stdout


def test_op_times_finds_the_matmul_and_names_its_origin():
  """memjax.core.profiling on a jitted matmul + elementwise: every op of the trace is named
  from the HLO, the dot is a matmul by kind, the kinds add up to the ops' total."""
  from memjax.core import profiling
  f = jax.jit(lambda a, b: jnp.tanh(a @ b) * 2.0)
  a, b = jnp.ones((256, 256)), jnp.ones((256, 256))
  hlo = f.lower(a, b).compile().as_text()
  ops = profiling.op_times(lambda: f(a, b), hlo, calls=3)
  assert ops and all(o.ms >= 0 for o in ops)
  assert [o.ms for o in ops] == sorted((o.ms for o in ops), reverse=True)
  kinds = profiling.by_kind(ops)
  assert "matmuls (dot, ynn fusions)" in kinds
  assert any("dot_general" in o.origin for o in ops)
  np.testing.assert_allclose(sum(kinds.values()), sum(o.ms for o in ops), rtol=1e-9)
  assert profiling.family(profiling.Op("copy_fusion.12", "", "jit(f)/transpose", 1.0)) == \
      "copy_fusion | transpose"
