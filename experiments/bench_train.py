"""Training throughput, model FLOP utilisation and TBPTT compile-time scaling, in one run.

  python experiments/bench_train.py                      # the default THEN recall config
  python experiments/bench_train.py --config.model.dim=256

Prints tokens/s; MFU = model FLOPs/s / FLOP/s of a float32 matmul measured in the
same run; and compile time of the TBPTT gradient over 16 vs 2 segments.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from memjax.core import cli
from memjax.core import loop
from memjax.core.step import make_multi_step
from memjax.core.step import make_train_step
from memjax.then import model as then

_CONFIG = cli.define_config_file("config", "configs/then_recall.py", "Config file.")
_CALLS = flags.DEFINE_integer("calls", 10, "Timed calls of the jitted multi-step.")
_MATMUL = flags.DEFINE_integer("matmul", 2048, "Size of the reference float32 matmul.")


def _time(f, *args, reps=3):
  jax.block_until_ready(f(*args))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_flops(n: int) -> float:
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  return 2 * n ** 3 / _time(f, a, a)


def compile_seconds(config, task, num_segments: int) -> float:
  model = then.ThenModel(config, task.vocab_size, task.segment_len)
  b, s = config.train.batch_size, task.segment_len
  params = jax.eval_shape(model.init_params, jax.random.key(0))
  x = jax.ShapeDtypeStruct((b, num_segments * s), jnp.int32)

  def loss(params, x):
    logits, _ = model.run(params, model.init_state(b), x)
    return logits.mean()

  t0 = time.perf_counter()
  jax.jit(jax.grad(loss)).lower(params, x).compile()
  return time.perf_counter() - t0


def main(argv):
  del argv
  c = _CONFIG.value
  loop.validate(c)
  task, system, tx = loop.build(c)
  state = loop.init_state(c, system, tx)
  k = c.train.steps_per_call
  step = jax.jit(make_multi_step(make_train_step(system.loss, tx)), donate_argnums=0)
  it = iter(task.batches("train", c.train.batch_size, 0))
  batches = [jax.tree.map(lambda *b: np.stack(b), *[next(it) for _ in range(k)]) for _ in range(2)]
  state, m = step(state, batches[0])
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for i in range(_CALLS.value):
    state, m = step(state, batches[i % 2])
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / (_CALLS.value * k)
  tokens = c.train.batch_size * task.length
  model_flops = then.flops_per_token(c.model, task.vocab_size, task.segment_len) * tokens
  peak = matmul_flops(_MATMUL.value)
  c2, c16 = compile_seconds(c, task, 2), compile_seconds(c, task, 16)
  rows = [
      ("device", f"{jax.devices()[0].device_kind} x{jax.device_count()}"),
      ("step time (ms)", f"{dt * 1e3:.2f}"),
      ("training tokens/s", f"{tokens / dt:,.0f}"),
      ("model GFLOP/step", f"{model_flops / 1e9:.3f}"),
      ("model GFLOP/s", f"{model_flops / dt / 1e9:.2f}"),
      (f"float32 matmul {_MATMUL.value}^3 GFLOP/s", f"{peak / 1e9:.2f}"),
      ("MFU (model / matmul)", f"{model_flops / dt / peak:.3f}"),
      ("compile s, TBPTT 2 segments", f"{c2:.2f}"),
      ("compile s, TBPTT 16 segments", f"{c16:.2f}"),
      ("compile ratio 16/2", f"{c16 / c2:.2f}"),
  ]
  w = max(len(r[0]) for r in rows)
  for name, v in rows:
    print(f"{name.ljust(w)}  {v}")


if __name__ == "__main__":
  cli.run(main)
