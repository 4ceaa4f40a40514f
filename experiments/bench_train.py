"""Training throughput and model FLOP utilisation of every design's default config, one run.

  python experiments/bench_train.py                        # all designs, THEN at dim 64 and 256
  python experiments/bench_train.py --designs=then --then_dims= --config.model.layers=2
  python experiments/bench_train.py --quick                # tiny configs: a smoke test

THEN runs from --config (default configs/then_recall.py, overrides allowed) at its own width,
then at each of --then_dims; the other designs from their default configs. --quick uses every
design's :tiny config (THEN's too) and one width.

Per design: step time (wall and CPU, best of --rounds x --calls calls of the jitted
steps_per_call-step call the training loop makes), training tokens/s, model GFLOP/step (THEN:
its analytic count, then.flops_per_token; the others: the matmuls of the traced step,
memjax.core.flops) and MFU = model FLOP/s / float32 matmul FLOP/s, the matmul (--matmul^3)
timed in the same run next to each design (the best of all its timings is the yardstick).
Also THEN's TBPTT compile time over 16 vs 2 segments (not with --quick).
"""
import copy
import importlib.util
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from memjax.core import bench
from memjax.core import cli
from memjax.core import config as cfg
from memjax.core import loop
from memjax.core import tasks
from memjax.then import model as then

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGNS = {
    "then": "configs/then_recall.py",
    "hrsa": "configs/hrsa_retrieval.py",
    "titans": "configs/titans_recall.py",
    "hrm": "configs/hrm_reasoning.py",
    "planner": "configs/hrrm_planner.py",
    "reasoner": "configs/hrrm_reasoner.py",
}

_DESIGNS = flags.DEFINE_list("designs", list(DESIGNS), f"Designs to run, of {list(DESIGNS)}.")
_CONFIG = cli.define_config_file("config", DESIGNS["then"], "THEN's config file.")
_THEN_DIMS = flags.DEFINE_list("then_dims", ["256"], "More THEN runs, at these model.dim.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny configs, one call, a 256^3 matmul: a smoke test.")
_CALLS = flags.DEFINE_integer("calls", 3, "Timed calls per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds (the best is kept).")
_MATMUL = flags.DEFINE_integer("matmul", 2048, "Size of the reference float32 matmul.")


def then_gflop(config, system, state, batch):
  """THEN's analytic count, the head where the loss applies it: the task's answer tail, or
  (a task that does not say where its answers lie) the segments with a scored position."""
  del system, state
  s = config.model.segment_len or config.task.segment_len
  task = tasks.make_task(config.task)
  ans = np.asarray(batch["answer"]) > 0
  tail = getattr(task, "answer_tail", None)
  if tail:
    scored = tail / ans.shape[1]
  else:
    scored = float(ans.reshape(ans.shape[0], -1, s).any((0, 2)).mean())
  vocab = task.vocab_size
  per_token = then.flops_per_token(config.model, vocab, s, head_fraction=scored)
  return per_token * bench.tokens_per_step(batch) / 1e9, "analytic (then.flops_per_token)"


def then_compile_seconds(config, num_segments: int) -> float:
  """Compile time of THEN's TBPTT gradient over `num_segments` segments (up to
  tbptt.UNROLL_UP_TO unrolled, longer a scan whose compile time does not grow)."""
  task = tasks.make_task(config.task)
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


def load_config(path: str, arg: str | None):
  spec = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def runs():
  """(label, config) for each design asked for; THEN once per --then_dims."""
  arg = "tiny" if _QUICK.value else None
  dims = cli.int_list("then_dims", _THEN_DIMS.value)
  for name in _DESIGNS.value:
    if name not in DESIGNS:
      raise cfg.ConfigError(f"--designs: unknown design {name!r}, one of {list(DESIGNS)}")
  for name in _DESIGNS.value:
    if name != "then":
      yield name, load_config(DESIGNS[name], arg)
      continue
    if _QUICK.value:
      c = load_config(DESIGNS[name], arg)
      yield f"then dim {c.model.dim}", c
      continue
    yield f"then dim {_CONFIG.value.model.dim}", _CONFIG.value
    for d in dims:
      c = copy.deepcopy(_CONFIG.value)
      c.model.dim = d
      yield f"then dim {d}", c


def main(argv):
  del argv
  quick = _QUICK.value
  n = 256 if quick else _MATMUL.value
  calls, rounds = (1, 1) if quick else (_CALLS.value, _ROUNDS.value)
  print(f"device {jax.devices()[0].device_kind} x{jax.device_count()}; float32 matmul {n}^3")
  rows, peaks = [], []
  for label, c in runs():
    peaks.append(bench.matmul_gflops(n))
    count = then_gflop if c.model.name == "then" else bench.step_gflop
    r = bench.bench_step(c, calls=calls, rounds=rounds, count=count)
    rows.append((label, r))
    print(f"  {label}: {r.step_ms:.2f} ms/step (CPU {r.cpu_ms:.2f}), {r.gflop:.3f} GFLOP/step "
          f"[{r.flop_source}], matmul {peaks[-1]:.1f} GFLOP/s", flush=True)
  peak = max(peaks)
  print(f"\nmatmul {n}^3 float32: best {peak:.1f} GFLOP/s of {len(peaks)} timings "
        f"(min {min(peaks):.1f}); MFU against the best")
  head = ("design", "step ms", "CPU ms", "tokens/s", "GFLOP/step", "GFLOP/s", "MFU")
  table = [head] + [(label, f"{r.step_ms:.2f}", f"{r.cpu_ms:.2f}",
                     f"{r.tokens / r.step_ms * 1e3:,.0f}", f"{r.gflop:.3f}",
                     f"{r.gflop / r.step_ms * 1e3:.2f}",
                     f"{r.gflop / r.step_ms * 1e3 / peak:.3f}") for label, r in rows]
  widths = [max(len(row[i]) for row in table) for i in range(len(head))]
  for row in table:
    print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in
                    enumerate(zip(row, widths))))
  if "then" in _DESIGNS.value and not quick:
    c = _CONFIG.value
    c2, c16 = then_compile_seconds(c, 2), then_compile_seconds(c, 16)
    print(f"THEN TBPTT compile s: 2 segments {c2:.2f}, 16 segments {c16:.2f} "
          f"(ratio {c16 / c2:.2f})")


if __name__ == "__main__":
  cli.run(main)
