"""The generic training loop: config in, checkpoints, metrics and results.json out.

Every model family plugs in through a System (memjax/core/system.py); the
loop owns state, data, checkpoints, logging and the final yardstick.

A workdir has one writer (memjax.core.workdir: a lock, taken before anything is
written); a resumed run must have the config it was started with, or say
`allow_config_change` (the change goes to config.history.jsonl); a state with a
non-finite loss, gradient or parameter is never saved.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import time

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from absl import logging

from memjax.core import checkpointing
from memjax.core import distributed
from memjax.core import precision
from memjax.core import registry as systems
from memjax.core import config as cfg
from memjax.core import system as system_lib
from memjax.core import tasks
from memjax.core import workdir as wd_lib
from memjax.core import yardstick
from memjax.core.errors import TrainingDiverged  # noqa: F401  (raised here, caught by cli)
from memjax.core.errors import TrainingStopped  # noqa: F401
from memjax.core.optim import make_optimizer
from memjax.core.state import TrainState
from memjax.core.step import make_multi_step
from memjax.core.step import make_train_step


def validate(config) -> None:
  """Every check that can fail before anything compiles."""
  for section in ("model", "task", "train"):
    cfg.require(section in config, section, "section missing from config")
  cfg.validate_train(config)
  tasks.validate(config)
  systems.validate(config)
  dp = distributed.data_parallel(config.train.get("data_parallel", 1))
  cfg.require(dp <= jax.device_count(), "train.data_parallel",
              f"{dp} exceeds the {jax.device_count()} devices available")
  cfg.require(config.train.batch_size % dp == 0, "train.batch_size",
              f"{config.train.batch_size} is not divisible by train.data_parallel={dp}")
  eval_bs = config.train.get("eval_batch_size", config.train.batch_size)
  cfg.require(eval_bs % dp == 0, "train.eval_batch_size",
              f"{eval_bs} is not divisible by the {dp} data-parallel devices")


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

  def __init__(self, workdir: str, enabled: bool = True, start: int = 0):
    # Rows past `start` were dropped (wd_lib.truncate_metrics): steps re-run after a resume
    # get one row each; TensorBoard is told the same with purge_step.
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self.tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                              purge_step=start + 1 if start else None)

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
          stop_after: int | None = None, allow_config_change: bool = False) -> dict:
  """Trains (resuming from the newest intact checkpoint in `workdir`), then writes results.json.

  The workdir is locked for the whole run (a second writer is refused). Resuming with
  a config that differs from the workdir's config.json raises ConfigError listing the
  differences, unless `allow_config_change`. `stop_after` ends the run early at that
  step, as if killed after its checkpoint (for resume tests). Returns the results dict
  (only "state" when not evaluated).
  """
  validate(config)
  # Before anything is written. The one writer is process 0 (multi-host: issue 17).
  with wd_lib.claim_primary(workdir):
    return _train(config, os.path.abspath(workdir), progress=progress,
                  evaluate_at_end=evaluate_at_end, stop_after=stop_after,
                  allow_config_change=allow_config_change)


def _mismatch_with_config(e: checkpointing.ConfigMismatch, changes) -> checkpointing.ConfigMismatch:
  """Names the config keys behind a shape mismatch, when the config change is known."""
  model = [(k, o, n) for k, o, n in changes if k.startswith("model.")]
  if not model:
    return e
  keys = ", ".join(f"{k} {n!r} vs {o!r}" for k, o, n in model)
  return checkpointing.ConfigMismatch(e.where, f"{keys} (config vs checkpoint); {e.detail}")


def _restore_for_training(mngr, workdir, state, changes):
  """The newest intact checkpoint; damaged newer steps are moved aside with a warning so the
  resumed run can write those steps again. Returns (state, data_state, manager)."""
  try:
    state, data_state, skipped = checkpointing.restore_intact(mngr, checkpointing.abstract(state))
  except checkpointing.ConfigMismatch as e:
    mngr.close()
    raise _mismatch_with_config(e, changes) from e
  except checkpointing.CheckpointError:
    mngr.close()
    raise
  if skipped:
    for s, e in skipped:
      moved = checkpointing.quarantine(mngr, workdir, s)
      wd_lib.warn(f"skipped damaged checkpoint step {s} ({e}); moved it to {moved}; "
                  f"resuming from step {int(state.step)}")
    mngr.reload()
  return state, data_state, mngr


def warm_start(state, source: str, skip=()):
  """`state` with the parameters of `source`'s newest intact checkpoint (another workdir of a
  config with the same parameter shapes): a curriculum's next stage. Parameters whose name
  matches a regex in `skip` keep their fresh init (say, a bias sized by the input length).
  Step, optimizer moments and data position start afresh; a resumed run never warm-starts."""
  checkpointing.load_config(source)     # not a workdir at all: say so in one line
  fresh = re.compile("|".join(skip)).search if skip else lambda name: False
  mngr = checkpointing.manager(source, read_only=True)
  try:
    step = mngr.latest_step()
    if step is None:
      raise checkpointing.CheckpointError(f"train.init_from={source}: no checkpoint there")
    stored = checkpointing.stored_shapes(mngr, step)

    # Arrays not kept (skipped params; moments and memory, whose shapes follow the batch size)
    # are read at their stored shapes, then dropped.
    def target(path, x):
      name = checkpointing.names(path)
      dropped = fresh(name) or not name.startswith("params/")
      return (jax.ShapeDtypeStruct(stored[name], x.dtype)
              if dropped and stored.get(name, x.shape) != x.shape else x)

    restored, _ = checkpointing.restore(
        mngr, jax.tree_util.tree_map_with_path(target, checkpointing.abstract(state)))
  except checkpointing.ConfigMismatch as e:
    raise checkpointing.ConfigMismatch(e.where, f"train.init_from: {e.detail}") from e
  finally:
    mngr.close()
  bad, total = checkpointing.params_finite(restored.params)
  if bad:
    raise checkpointing.CheckpointError(
        f"train.init_from={source}: {bad:,} of {total:,} parameter values are not finite")
  params = jax.tree_util.tree_map_with_path(
      lambda p, new, old: new if fresh("params/" + checkpointing.names(p)) else old,
      state.params, restored.params)
  return state.replace(params=params)


def _start_files(workdir, config, changes, start: int, end: int) -> None:
  """The workdir's files as a run starting at `start` needs them (multi-host: process 0's job).

  config.json (and its history when changed); results.json retired when training goes on,
  so it never sits beside newer checkpoints; metrics rows past `start` dropped, so steps re-run
  after a resume have one row each."""
  wd_lib.record_config(workdir, config, changes, step=start)
  if start < end:
    wd_lib.retire_results(workdir)
  wd_lib.truncate_metrics(workdir, start)


def _train(config, workdir, *, progress, evaluate_at_end, stop_after, allow_config_change):
  t = config.train
  task, system, tx = build(config)
  mesh = distributed.data_mesh(t.get("data_parallel", 1))
  state = distributed.place(init_state(config, system, tx), mesh)
  data = distributed.local_batches(task, "train", t.batch_size, t.seed, mesh)
  it = iter(data)

  # Before anything is restored or written: a changed config is refused (or allowed and kept).
  changes = wd_lib.check_config(workdir, config, allow_change=allow_config_change)
  mngr = checkpointing.manager(workdir, keep=t.get("keep_checkpoints", 2))
  if mngr.latest_step() is not None:
    state, data_state, mngr = _restore_for_training(mngr, workdir, state, changes)
    it.set_state(data_state)
    logging.info("resumed from step %d", int(state.step))
  elif t.get("init_from"):
    state = warm_start(state, t.init_from, t.get("init_skip", ()))
  start = int(state.step)
  end = t.steps if stop_after is None else min(t.steps, stop_after)
  if distributed.is_main():
    _start_files(workdir, config, changes, start, end)

  dtype = t.get("compute_dtype", "float32")
  # The frozen weights (System.frozen) enter as an argument, never as baked-in constants.
  step_fn = jax.jit(lambda state, batches, frozen: make_multi_step(make_train_step(
      precision.with_compute_dtype(system_lib.bind(system, frozen).loss, dtype), tx))(
          state, batches), donate_argnums=0)
  writers = (_Writers(workdir, enabled=t.get("tensorboard", True), start=start)
             if distributed.is_main() else distributed.Silent())
  k = t.steps_per_call
  bar = None
  if progress and distributed.is_main():
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=t.steps, initial=start, desc=config.model.name, unit="step",
               dynamic_ncols=True)
  t0, step = time.time(), start
  try:
    while step < end:
      batches = jax.tree.map(lambda *b: np.stack(b), *itertools.islice(it, k))
      batches = distributed.to_global(batches, mesh, axis=1)
      state, metrics = step_fn(state, batches, system.frozen)
      step += k
      # Checked before any save below: a non-finite state never reaches the disk.
      if not bool(metrics["finite"]):
        raise TrainingDiverged(
            f"non-finite loss, gradient or parameter between steps {step - k} and {step}; "
            f"stopped, nothing saved past step {mngr.latest_step()}. Last good checkpoint: "
            f"step {mngr.latest_step()} in {mngr.directory}")
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
    # The final state, when the last step was not a checkpoint step (never after a raise).
    if t.checkpoint_every and mngr.latest_step() != step:
      checkpointing.save(mngr, step, state, it.get_state())
  finally:
    if bar is not None:
      bar.close()
    writers.close()
    mngr.wait_until_finished()
    mngr.close()
  train_time = time.time() - t0
  if not evaluate_at_end or step < t.steps:
    return {"state": state}
  results = evaluate(config, system, task, state.params)
  results["train_steps"] = int(state.step)
  results["train_seconds_this_run"] = train_time
  if distributed.is_main():
    yardstick.write_results(workdir, results)
  results["state"] = state
  return results


def evaluate(config, system, task, params) -> dict:
  """The yardstick (plus the system's extra results) on held-out batches."""
  t = config.train
  batch_size = t.get("eval_batch_size", t.batch_size)
  mesh = distributed.data_mesh(t.get("data_parallel", 1))
  params = distributed.replicate(params, mesh) if mesh is not None else params
  local = distributed.local_batches(task, "eval", batch_size, t.seed, mesh)
  batches = [distributed.to_global(b, mesh) for b in itertools.islice(iter(local), t.eval_batches)]
  results = yardstick.evaluate(system, params, batches, task.chance)
  if hasattr(task, "shuffled_baseline"):   # whole global batches: shuffled rolls across processes
    whole = lambda b: jax.tree.map(lambda x: np.asarray(
        multihost_utils.process_allgather(x, tiled=True)), b)
    results["baseline_shuffled"] = float(np.mean([task.shuffled_baseline(whole(b))
                                                  for b in batches]))
  if system.extra_results is not None:
    results.update(system.extra_results(params, iter(batches)))
  return results


def evaluate_workdir(workdir: str) -> dict:
  """Restores the newest intact checkpoint of a workdir and writes its results.json.

  Under the same rules as training: the workdir is locked (refused while a run holds
  it) and checked writable before the yardstick runs; non-finite parameters are refused."""
  checkpointing.load_config(workdir)      # not a workdir at all: say so before locking
  with wd_lib.claim_primary(workdir, create=False):
    config, task, system, state = restore_workdir(workdir)
    results = evaluate(config, system, task, state.params)
    results["train_steps"] = int(state.step)
    if distributed.is_main():
      yardstick.write_results(workdir, results)
    return results


def restore_workdir(workdir: str):
  """(config, task, system, state) of a workdir's newest intact checkpoint, for binaries that
  serve a trained model (eval, live memory); non-finite parameters are refused (one line)."""
  config = checkpointing.load_config(workdir)
  validate(config)
  task, system, tx = build(config)
  mesh = distributed.data_mesh(config.train.get("data_parallel", 1))
  abstract = distributed.place(jax.eval_shape(lambda: init_state(config, system, tx)), mesh)
  mngr = checkpointing.manager(workdir, read_only=True)
  try:
    state, _ = checkpointing.restore(mngr, abstract)
    where = f"{mngr.directory}/{int(state.step)}"
  finally:
    mngr.close()  # an open manager's event loop prints noise at exit after an error
  bad, total = checkpointing.params_finite(state.params)
  if bad:
    raise checkpointing.CheckpointError(
        f"{where}: {bad:,} of {total:,} parameter values are not finite (NaN or inf); "
        f"refusing to use them")
  return config, task, system, state
