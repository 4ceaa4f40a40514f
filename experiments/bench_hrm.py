"""Compile time of the HRM training step as H and L grow (scanned loops), and step time.

  python experiments/bench_hrm.py
  python experiments/bench_hrm.py --config=configs/hrrm_reasoner.py --sizes=2,4,8 --unrolled

Prints, for each H = L = n: the compile time of one jitted train step (lower +
compile), the ratio to the smallest n, and the median time of a compiled step.
Scanned loops should keep the ratio near 1 (aim: <= 1.3 from 2 to 8);
--unrolled adds the same with the loops unrolled, for contrast.
"""
import time

from absl import flags

from memjax.core import cli

_CONFIG = cli.define_config_file("config", "configs/hrm_reasoning.py", "An HRM-family config.")
_SIZES = flags.DEFINE_list("sizes", ["2", "8"], "H = L values.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per size.")
_UNROLLED = flags.DEFINE_bool("unrolled", False, "Also time unrolled loops.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Compile timings per size (the median is shown).")


def bench(config, n: int, unroll: bool, steps: int, repeats: int):
  import jax
  import numpy as np
  from memjax.core import loop
  from memjax.core.step import make_train_step
  c = config.copy_and_resolve_references()
  c.model.update(max_H=n, inner_T=n, unroll=unroll)
  task, system, tx = loop.build(c)
  state = loop.init_state(c, system, tx)
  batch = next(iter(task.batches("train", c.train.batch_size, 0)))
  compiles = []
  for _ in range(repeats):
    jax.clear_caches()
    step = jax.jit(make_train_step(system.loss, tx))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compiles.append(time.perf_counter() - t0)
  state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return float(np.median(compiles)), float(np.median(times))


def main(argv):
  del argv
  config = _CONFIG.value
  sizes = cli.int_list("sizes", _SIZES.value)
  rows = []
  for unroll in ([False, True] if _UNROLLED.value else [False]):
    base = None
    for n in sizes:
      comp, step = bench(config, n, unroll, _STEPS.value, _REPEATS.value)
      base = base or comp
      rows.append((("unrolled" if unroll else "scan"), n, comp, comp / base, step))
  print(f"config {config.model.name}, d_model {config.model.d_model}, batch "
        f"{config.train.batch_size}, segments {config.model.segments}")
  print(f"{'loops':9} {'H=L':>4} {'compile s':>10} {'ratio':>6} {'step ms':>8}")
  for kind, n, comp, ratio, step in rows:
    print(f"{kind:9} {n:>4} {comp:>10.2f} {ratio:>6.2f} {1000 * step:>8.1f}")
  return 0


if __name__ == "__main__":
  cli.run(main)
