"""Where a training step's time goes: a jax.profiler trace of the jitted k-step call, its
XLA ops' durations summed per op, grouped by kind, the largest named with their HLO shape
and the JAX operation they came from.

  python experiments/profile_step.py                               # THEN's default config
  python experiments/profile_step.py --config=configs/titans_recall.py --top=20

How to read the durations: memjax.core.profiling (BUILD_NOTES.md, issue 16).
"""
import jax
import numpy as np
from absl import flags

from memjax.core import cli
from memjax.core import bench
from memjax.core import profiling

_CONFIG = cli.define_config_file("config", "configs/then_recall.py", "Config file.")
_CALLS = flags.DEFINE_integer("calls", 5, "Profiled calls of the jitted multi-step.")
_TOP = flags.DEFINE_integer("top", 30, "Largest ops to list.")


def main(argv):
  del argv
  c = _CONFIG.value
  task, system, state, step = bench.training_call(c)
  k = c.train.steps_per_call
  it = iter(task.batches("train", c.train.batch_size, c.train.seed))
  batches = jax.tree.map(lambda *b: np.stack(b), *[next(it) for _ in range(k)])
  hlo = step.lower(state, batches, system.frozen).compile().as_text()

  def call():
    nonlocal state
    state, m = step(state, batches, system.frozen)
    return m

  ops = profiling.op_times(call, hlo, calls=_CALLS.value)
  per_step = lambda ms: ms / k
  print(f"{c.model.name}: XLA op time {per_step(sum(o.ms for o in ops)):.2f} ms/step summed over "
        f"{len(ops)} ops")
  for name, ms in profiling.by_kind(ops).most_common():
    print(f"  {name:38s} {per_step(ms):7.2f} ms/step")
  print(f"largest {_TOP.value} ops, ms/step:")
  for o in ops[:_TOP.value]:
    print(f"  {per_step(o.ms):7.3f}  {o.name[:34]:34s} {o.shape}  {o.origin[-70:]}")


if __name__ == "__main__":
  cli.run(main)
