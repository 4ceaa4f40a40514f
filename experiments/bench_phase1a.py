"""Examples optimized per second: one vmapped batch of B examples vs a loop over single examples.

  python experiments/bench_phase1a.py                       # tiny random Qwen2 (seconds)
  python experiments/bench_phase1a.py --model=gemma3-270m --steps=5 --num_slots=8   # real model
Both paths run the same compiled round function (stage 2, `steps` steps); compile time is
excluded (one warm-up call per shape); each timing is the best of --repeats.
"""
import os
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from memjax.core import cli

_MODEL = flags.DEFINE_string("model", "tiny:qwen2", "Generator: tiny:<arch>, gemma3-270m, or a path.")
_BATCH = flags.DEFINE_integer("batch", 16, "Examples in the vmapped batch.")
_STEPS = flags.DEFINE_integer("steps", 20, "Optimizer steps per round.")
_SLOTS = flags.DEFINE_integer("num_slots", 8, "K content slots.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions, interleaved (best is reported).")
_SINGLE_THREAD = flags.DEFINE_bool("single_thread", False,
                                   "XLA CPU without multi-threaded Eigen (on a CPU shared with other "
                                   "jobs, oversubscribed threads slow the large batched matmuls).")


def main(argv):
  del argv
  if _SINGLE_THREAD.value:   # before the backend starts (it starts lazily, at first use)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false").strip()
  from memjax.data import qa
  from memjax.dcm import phase1a
  from memjax.dcm import soft_prompt as sp
  import importlib.util
  spec = importlib.util.spec_from_file_location("p1a_cfg", os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "configs", "phase1a.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  config.model, config.train.steps, config.stm.num_slots = _MODEL.value, _STEPS.value, _SLOTS.value
  config.train.batch_size = _BATCH.value
  loaded = phase1a.load_generator(config.model, dtype=config.dtype)
  r = phase1a.Phase1a(loaded.model, loaded.tokenizer, config)
  b = _BATCH.value
  ex = qa.synthetic_qa(b, seed=0)
  enc = phase1a.encode(ex, loaded.tokenizer, config)
  batch = dict(targets=enc.targets_NxSxT, mask=enc.mask_NxSxT, index=np.arange(b, dtype=np.int32),
               valid=np.ones(b, bool), random_ce=np.full((b, 2), 1e9, np.float32),
               context_ce=np.full((b, 2), 1e-9, np.float32),   # never converges: all work
               part_ce=np.full((b, 2), np.inf, np.float32))
  src = jnp.asarray(sp.STAGE_SOURCES["stage2"])
  key = jax.random.key(0)

  def run(rows):
    sub = {k: v[rows] for k, v in batch.items()}
    state = sp.StageState.init(len(rows), _SLOTS.value, r.dim)
    out = r._round(r.params, r.parts, state, sub, src, jnp.int32(0), key)
    return jax.block_until_ready(out)

  paths = {"batch": lambda: run(np.arange(b)),
           "loop": lambda: [run(np.asarray([i])) for i in range(b)]}
  best = {}
  for name, fn in paths.items():
    fn()                                   # warm-up: compile
    best[name] = float("inf")
  for _ in range(_REPEATS.value):          # interleaved, so load changes hit both paths
    for name, fn in paths.items():
      t0 = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - t0)
  t_batch, t_loop = best["batch"], best["loop"]
  print(f"phase 1a content optimization, model {loaded.name}, K={_SLOTS.value}, "
        f"{_STEPS.value} steps, {jax.device_count()} device(s), "
        f"{'single' if _SINGLE_THREAD.value else 'multi'}-threaded XLA CPU")
  print(f"{'path':<28}{'seconds':>10}{'examples/s':>14}")
  print(f"{f'vmapped batch of {b}':<28}{t_batch:>10.3f}{b / t_batch:>14.2f}")
  print(f"{f'loop over {b} single examples':<28}{t_loop:>10.3f}{b / t_loop:>14.2f}")
  print(f"speedup {t_loop / t_batch:.1f}x")
  return 0


if __name__ == "__main__":
  cli.run(main)
