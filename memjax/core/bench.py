"""Training-step throughput of any System from its config: step time, tokens/s, model FLOPs
and MFU against a float32 matmul timed in the same run (experiments/bench_train.py).

Timings are best-of: `rounds` rounds of `calls` calls of the jitted k-step multi-step (the
training loop's own call), wall (time.perf_counter) and CPU (time.process_time) per step, so
a figure taken on a shared machine can be read against its CPU time.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from memjax.core import flops as flops_lib
from memjax.core import loop
from memjax.core import system as system_lib
from memjax.core.optim import make_optimizer
from memjax.core.step import make_multi_step
from memjax.core.step import make_train_step

TOKEN_KEYS = ("inputs", "doc", "tokens")   # the token streams a step reads, per design's batch


def matmul_gflops(n: int, reps: int = 3) -> float:
  """GFLOP/s of one float32 n x n x n matmul, best of `reps`."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, a))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best / 1e9


@dataclasses.dataclass
class StepBench:
  step_ms: float            # wall, best of rounds
  cpu_ms: float             # process CPU time, best of rounds
  tokens: int               # per step
  gflop: float              # model GFLOP per step
  flop_source: str


def tokens_per_step(batch) -> int:
  return int(sum(np.size(batch[k]) for k in TOKEN_KEYS if k in batch))


def step_gflop(config, system, state, batch) -> tuple[float, str]:
  """Model GFLOP of one training step: the matmuls of the traced step (memjax.core.flops:
  forward and backward, scans times their length, a cond's costliest branch)."""
  tx = make_optimizer(config.train)
  step = make_train_step(system_lib.bind(system, system.frozen).loss, tx)
  count = flops_lib.matmul_flops(step, state, batch)
  note = f", {count.while_loops} while loop(s) counted once" if count.while_loops else ""
  return count.flops / 1e9, f"jaxpr matmuls{note}"


def training_call(config):
  """(task, system, state, step): the training loop's jitted k-step call, state donated,
  `step(state, batches, system.frozen) -> (state, metrics)`."""
  loop.validate(config)
  task, system, tx = loop.build(config)
  state = loop.init_state(config, system, tx)
  step = jax.jit(lambda state, batches, frozen: make_multi_step(make_train_step(
      system_lib.bind(system, frozen).loss, tx))(state, batches), donate_argnums=0)
  return task, system, state, step


def bench_step(config, *, calls: int = 3, rounds: int = 3, count=step_gflop) -> StepBench:
  """Times the training loop's jitted multi-step on the config's task and model; the model
  FLOPs are `count(config, system, state, batch) -> (GFLOP per step, what counted them)`."""
  task, system, state, step = training_call(config)
  k = config.train.steps_per_call
  it = iter(task.batches("train", config.train.batch_size, config.train.seed))
  one = next(it)
  gflop, source = count(config, system, state, jax.tree.map(jnp.asarray, one))
  batches = [jax.tree.map(lambda *b: np.stack(b), *[next(it) for _ in range(k)])
             for _ in range(2)]
  state, m = step(state, batches[0], system.frozen)
  jax.block_until_ready(m)
  wall, cpu = float("inf"), float("inf")
  for _ in range(rounds):
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(calls):
      state, m = step(state, batches[i % 2], system.frozen)
    jax.block_until_ready(m)
    wall = min(wall, (time.perf_counter() - t0) / (calls * k))
    cpu = min(cpu, (time.process_time() - c0) / (calls * k))
  return StepBench(wall * 1e3, cpu * 1e3, tokens_per_step(one), gflop, source)
