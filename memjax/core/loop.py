"""The generic training loop: config in, checkpoints, metrics and results.json out.

Every model family plugs in through a System (memjax/training/system.py); the
loop owns state, data, checkpoints, logging and the final yardstick.
"""
from __future__ import annotations

import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from memjax.core import checkpointing
from memjax.core import distributed
from memjax.core import registry as systems
from memjax.core import config as cfg
from memjax.core import system as system_lib
from memjax.core import tasks
from memjax.core import yardstick
from memjax.core.optim import make_optimizer
from memjax.core.state import TrainState
from memjax.core.step import make_multi_step
from memjax.core.step import make_train_step


class TrainingDiverged(RuntimeError):
  """Loss or gradients went non-finite; the last good checkpoint is left intact."""


class TrainingStopped(RuntimeError):
  """The system asked to stop (System.stop_reason); the last good checkpoint is left intact."""


def validate(config) -> None:
  """Every check that can fail before anything compiles."""
  for section in ("model", "task", "train"):
    cfg.require(section in config, section, "section missing from config")
  cfg.validate_train(config)
  tasks.validate(config)
  systems.validate(config)
  dp = config.train.get("data_parallel", 1)
  cfg.require(dp <= jax.device_count(), "train.data_parallel",
              f"{dp} exceeds the {jax.device_count()} devices available")
  cfg.require(config.train.batch_size % dp == 0, "train.batch_size",
              f"{config.train.batch_size} is not divisible by train.data_parallel={dp}")


def build(config):
  """(task, system, optimizer) from a validated config."""
  task = tasks.make_task(config.task)
  system = systems.make_system(config, task)
  return task, system, make_optimizer(config.train)


def init_state(config, system, tx) -> TrainState:
  init_rng, state_rng = jax.random.split(jax.random.key(config.train.seed))
  params = system.init(init_rng)
  return TrainState.create(params, tx, state_rng, memory=system.init_memory(config.train.batch_size),
                           aux=system.init_aux())


class _Writers:
  """metrics.jsonl plus TensorBoard event files in the workdir."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self.tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in metrics.items():
        self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    self.jsonl.close()
    if self.tb is not None:
      self.tb.close()


def _scalars(metrics) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}


def train(config, workdir: str, *, progress: bool = True, evaluate_at_end: bool = True,
          stop_after: int | None = None) -> dict:
  """Trains (resuming from the latest checkpoint in `workdir`), then writes results.json.

  `stop_after` ends the run early at that step, as if killed after its checkpoint
  (for resume tests). Returns the results dict (empty when not evaluated).
  """
  validate(config)
  t = config.train
  os.makedirs(workdir, exist_ok=True)
  task, system, tx = build(config)
  state = init_state(config, system, tx)
  data = task.batches("train", t.batch_size, t.seed)
  it = iter(data)

  mngr = checkpointing.manager(workdir, keep=t.get("keep_checkpoints", 2))
  if mngr.latest_step() is not None:
    try:
      state, data_state = checkpointing.restore(mngr, checkpointing.abstract(state))
    except checkpointing.CheckpointError:
      mngr.close()
      raise
    it.set_state(data_state)
    logging.info("resumed from step %d", int(state.step))
  checkpointing.save_config(workdir, config)

  mesh = None
  if t.get("data_parallel", 1) > 1:
    mesh = distributed.make_mesh(t.data_parallel)
    state = state.replace(params=distributed.replicate(state.params, mesh),
                          opt_state=distributed.replicate(state.opt_state, mesh),
                          memory=distributed.shard_leading(state.memory, mesh))

  step_fn = jax.jit(lambda state, batches, frozen: make_multi_step(make_train_step(
      system_lib.bind(system, frozen).loss, tx))(state, batches), donate_argnums=0)
  writers = _Writers(workdir, enabled=t.get("tensorboard", True))
  k = t.steps_per_call
  start = int(state.step)
  end = t.steps if stop_after is None else min(t.steps, stop_after)
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=t.steps, initial=start, desc=config.model.name, unit="step",
               dynamic_ncols=True)
  t0, step = time.time(), start
  try:
    while step < end:
      batches = jax.tree.map(lambda *b: np.stack(b), *itertools.islice(it, k))
      if mesh is not None:
        batches = distributed.shard_batch(batches, mesh, axis=1)
      state, metrics = step_fn(state, batches, system.frozen)
      step += k
      if not bool(metrics["finite"]):
        raise TrainingDiverged(
            f"non-finite loss or gradient between steps {step - k} and {step}; stopped. "
            f"Last good checkpoint: step {mngr.latest_step()} in {mngr.directory}")
      if bool(metrics.get("stop", False)):
        raise TrainingStopped(
            f"stopped between steps {step - k} and {step}: {system.stop_reason}. "
            f"Last good checkpoint: step {mngr.latest_step()} in {mngr.directory}")
      if step % t.log_every == 0 or step == end:
        m = _scalars(metrics)
        m.pop("finite", None)
        m.pop("stop", None)
        m["steps_per_s"] = (step - start) / max(time.time() - t0, 1e-9)
        writers.write(step, m)
        if bar is not None:
          bar.set_postfix(loss=f"{m['loss_mean']:.4f}")
      if bar is not None:
        bar.update(k)
      if t.checkpoint_every and (step % t.checkpoint_every == 0 or step == t.steps):
        checkpointing.save(mngr, step, state, it.get_state())
  finally:
    if bar is not None:
      bar.close()
    writers.close()
    mngr.wait_until_finished()
  if t.checkpoint_every and mngr.latest_step() != step:
    checkpointing.save(mngr, step, state, it.get_state())
    mngr.wait_until_finished()
  mngr.close()
  train_time = time.time() - t0
  if not evaluate_at_end or step < t.steps:
    return {"state": state}
  results = evaluate(config, system, task, state.params)
  results["train_steps"] = int(state.step)
  results["train_seconds_this_run"] = train_time
  yardstick.write_results(workdir, results)
  results["state"] = state
  return results


def evaluate(config, system, task, params) -> dict:
  """The yardstick (plus the system's extra results) on held-out batches."""
  t = config.train
  batch_size = t.get("eval_batch_size", t.batch_size)
  batches = list(itertools.islice(iter(task.batches("eval", batch_size, t.seed)), t.eval_batches))
  results = yardstick.evaluate(system, params, batches, task.chance)
  if system.extra_results is not None:
    results.update(system.extra_results(params, iter(batches)))
  return results


def evaluate_workdir(workdir: str) -> dict:
  """Restores the latest checkpoint of a workdir and writes its results.json."""
  config = checkpointing.load_config(workdir)
  validate(config)
  task, system, tx = build(config)
  abstract = jax.eval_shape(lambda: init_state(config, system, tx))
  mngr = checkpointing.manager(workdir, read_only=True)
  try:
    state, _ = checkpointing.restore(mngr, abstract)
  finally:
    mngr.close()  # an open manager's event loop prints noise at exit after an error
  results = evaluate(config, system, task, state.params)
  results["train_steps"] = int(state.step)
  yardstick.write_results(workdir, results)
  return results
