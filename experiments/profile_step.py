"""Where a training step's time goes: a jax.profiler trace of the jitted k-step call, its
XLA ops' durations summed per op, grouped by kind, the largest named with their HLO shape
and the JAX operation they came from.

  python experiments/profile_step.py                               # THEN's default config
  python experiments/profile_step.py --config=configs/titans_recall.py --top=20

Durations are wall time per op as the trace records it: on a machine shared with other jobs
they include descheduling (BUILD_NOTES.md, issue 16); the sum runs over ops that can overlap on
several threads, so it can exceed the step time, and a cond's own entry holds the ops inside it
(listed too).
"""
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import numpy as np
from absl import flags

from memjax.core import cli
from memjax.core import bench

_CONFIG = cli.define_config_file("config", "configs/then_recall.py", "Config file.")
_CALLS = flags.DEFINE_integer("calls", 5, "Profiled calls of the jitted multi-step.")
_TOP = flags.DEFINE_integer("top", 30, "Largest ops to list.")

_NOT_OPS = ("ThunkExecutor", "$", "SlinkyThreadPool", "PjitFunction", "while", "call",
            "ExecuteReplicated", "CommonPjRtLoadedExecutable")   # host-side spans around a call


def kind(name: str, jax_op: str) -> str:
  """The op's kind from its XLA name and the JAX operation it came from (YNN fusions hold
  matmuls and reductions)."""
  if "reduce" in jax_op.rsplit("/", 1)[-1] or "reduce" in name:
    return "reductions"
  if name.startswith(("ynn_fusion", "dot", "xnn")):
    return "matmuls (dot, ynn fusions)"
  if name.startswith(("copy", "transpose", "bitcast_transpose", "wrapped_copy")):
    return "layout copies (+ fused elementwise)"
  if any(w in name for w in ("scatter", "gather", "dynamic")):
    return "gather, scatter, dynamic slices"
  return "other elementwise fusions"


def main(argv):
  del argv
  c = _CONFIG.value
  task, system, state, step = bench.training_call(c)
  k = c.train.steps_per_call
  it = iter(task.batches("train", c.train.batch_size, c.train.seed))
  batches = jax.tree.map(lambda *b: np.stack(b), *[next(it) for _ in range(k)])
  hlo = step.lower(state, batches, system.frozen).compile().as_text()
  for _ in range(3):
    state, m = step(state, batches, system.frozen)
  jax.block_until_ready(m)
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    for _ in range(_CALLS.value):
      state, m = step(state, batches, system.frozen)
    jax.block_until_ready(m)
    jax.profiler.stop_trace()
    trace = json.load(gzip.open(glob.glob(f"{d}/**/*.json.gz", recursive=True)[0]))
  total, count = collections.Counter(), collections.Counter()
  for e in trace["traceEvents"]:
    if e.get("ph") == "X" and not e["name"].startswith(_NOT_OPS) and "(" not in e["name"]:
      total[e["name"]] += e["dur"]
      count[e["name"]] += 1
  steps = _CALLS.value * k
  ms = lambda us: us / steps / 1e3
  def describe(name):
    found = re.search(r"%" + re.escape(name) + r" = (\S+).*?op_name=\"([^\"]*)\"", hlo)
    return (found.group(1), found.group(2)) if found else ("", "")

  by_kind = collections.Counter()
  for name, t in total.items():
    by_kind[kind(name, describe(name)[1])] += t
  print(f"{c.model.name}: XLA op time {ms(sum(total.values())):.2f} ms/step summed over "
        f"{len(total)} ops")
  for name, t in by_kind.most_common():
    print(f"  {name:38s} {ms(t):7.2f} ms/step")
  print(f"largest {_TOP.value} ops, ms/step:")
  for name, t in total.most_common(_TOP.value):
    shape, jax_op = describe(name)
    where = f"{shape}  {jax_op[-70:]}"
    print(f"  {ms(t):7.3f}  {name[:34]:34s} {where}")


if __name__ == "__main__":
  cli.run(main)
