"""Checkpoints: train state (params, optimizer, rng, persistent memory) and the data
iterator's position, saved together by orbax so a resumed run continues bit-identically.

orbax writes each step into a temporary directory and renames it when complete,
so a run killed mid-save leaves the previous checkpoint as the latest one. A
complete step damaged later (disk, a bad copy) is skipped with a warning for the
newest intact one; a checkpoint of another shape is named as a config mismatch.
"""
from __future__ import annotations

import contextlib
import json
import logging as py_logging
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from memjax.core import workdir as wd_lib


class CheckpointError(ValueError):
  """A checkpoint directory is missing, empty or unreadable."""


class ConfigMismatch(CheckpointError):
  """The checkpoint holds arrays of other shapes than the config builds."""

  def __init__(self, where: str, detail: str):
    super().__init__(f"config does not match the checkpoint {where}: {detail}")
    self.where, self.detail = where, detail


class _DropReadOnlyNotes(py_logging.Filter):
  # orbax warns at WARNING level that a read-only manager is read-only: not news to a reader.
  def filter(self, record):
    return "read only" not in str(record.msg) and "read_only=True" not in str(record.msg)


@contextlib.contextmanager
def _quiet_read_only():
  logger, f = py_logging.getLogger("absl"), _DropReadOnlyNotes()
  logger.addFilter(f)
  try:
    yield
  finally:
    logger.removeFilter(f)


def manager(workdir: str, *, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  if read_only and not os.path.isdir(path):
    raise CheckpointError(f"{workdir}: no checkpoints directory (expected {path})")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else keep, create=not read_only,
      cleanup_tmp_directories=not read_only, read_only=read_only,
      save_interval_steps=0 if read_only else 1)
  # Handlers named up front: item_metadata (the shape check) works before any restore.
  handlers = dict(state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler())
  with _quiet_read_only():
    return ocp.CheckpointManager(path, options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: dict) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=ocp.args.JsonSave(data_state)))


def latest_step(mngr: ocp.CheckpointManager) -> int | None:
  return mngr.latest_step()


def _one_line(e: BaseException, limit: int = 200) -> str:
  """orbax/tensorstore messages span lines and carry JSON specs: the first sentence, on one line."""
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= limit else text[:limit] + "..."


def names(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def _shapes(tree) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {names(p): tuple(x.shape) for p, x in leaves if hasattr(x, "shape")}


def stored_shapes(mngr, step: int) -> dict:
  """{array name: shape} of a step's state, from metadata only; CheckpointError if unreadable."""
  try:
    md = mngr.item_metadata(step)["state"]
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"{mngr.directory}/{step}: checkpoint is unreadable "
                          f"(metadata: {_one_line(e)})") from e
  return _shapes(getattr(md, "tree", md))


def shape_mismatch(mngr, step: int, abstract_state) -> str | None:
  """The first array whose stored shape differs from `abstract_state`'s, as text; None if all
  match. Reads metadata only; raises CheckpointError when even that is unreadable."""
  stored = stored_shapes(mngr, step)
  wanted = _shapes(abstract_state)
  for name, shape in wanted.items():
    if name in stored and stored[name] != shape:
      return f"{name} has shape {stored[name]} in the checkpoint, {shape} in the config"
  missing = sorted(set(wanted) - set(stored))
  extra = sorted(set(stored) - set(wanted))
  if missing or extra:
    return (f"arrays only in the config: {missing[:3]}, only in the checkpoint: {extra[:3]}")
  return None


def restore_step(mngr: ocp.CheckpointManager, abstract_state, step: int):
  """(state, data_state) of one step; ConfigMismatch for other shapes, CheckpointError if damaged."""
  mismatch = shape_mismatch(mngr, step, abstract_state)
  if mismatch:
    raise ConfigMismatch(f"{mngr.directory}/{step}", mismatch)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types for damaged files; name the step and dir
    raise CheckpointError(f"{mngr.directory}/{step}: checkpoint is unreadable "
                          f"({_one_line(e)})") from e
  return out.state, out.data


def restore_intact(mngr: ocp.CheckpointManager, abstract_state):
  """(state, data_state, skipped) of the newest intact checkpoint; `skipped`: [(step, error)]
  for the damaged newer ones. A shape mismatch is raised, never skipped (every step of a
  workdir has the same shapes); when no step is intact, the newest one's error is raised."""
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    raise CheckpointError(f"{mngr.directory}: no complete checkpoint found")
  skipped = []
  for s in steps:
    try:
      state, data = restore_step(mngr, abstract_state, s)
    except ConfigMismatch:
      raise
    except CheckpointError as e:
      skipped.append((s, e))
      continue
    return state, data, skipped
  if len(skipped) == 1:
    raise skipped[0][1]
  raise CheckpointError("no intact checkpoint: " + "; ".join(str(e) for _, e in skipped))


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Returns (state, data_state) of `step`, default the newest intact checkpoint (a damaged
  newer one is skipped with a warning naming it)."""
  if step is not None:
    return restore_step(mngr, abstract_state, step)
  state, data, skipped = restore_intact(mngr, abstract_state)
  for s, e in skipped:
    wd_lib.warn(f"skipped damaged checkpoint step {s}: {e}")
  return state, data


def quarantine(mngr: ocp.CheckpointManager, workdir: str, step: int) -> str:
  """Moves a damaged step out of checkpoints/ (kept for inspection), so a resumed run can
  save that step again; returns where it went."""
  dest_dir = os.path.join(workdir, "checkpoints_damaged")
  os.makedirs(dest_dir, exist_ok=True)
  dest = os.path.join(dest_dir, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
  os.replace(os.path.join(str(mngr.directory), str(step)), dest)
  return dest


def params_finite(params) -> tuple[int, int]:
  """(non-finite values, total values) over the float arrays of `params`."""
  bad = total = 0
  for x in jax.tree.leaves(params):
    if np.issubdtype(x.dtype, np.inexact):
      a = np.asarray(jax.device_get(x))
      bad += int(a.size - np.isfinite(a).sum())
      total += a.size
  return bad, total


def abstract(tree):
  """ShapeDtypeStructs (with shardings) of a concrete tree, to restore against."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def save_config(workdir: str, config) -> None:
  os.makedirs(workdir, exist_ok=True)
  wd_lib.write_text(os.path.join(workdir, "config.json"),
                    config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str):
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.isdir(workdir):
    raise CheckpointError(f"{workdir}: no such directory (expected a workdir with config.json)"
                          if not os.path.exists(workdir) else f"{workdir}: is a file, not a workdir")
  if not os.path.exists(path):
    raise CheckpointError(f"{workdir}: no config.json (not a memjax workdir?)")
  with open(path) as f:
    try:
      return ml_collections.ConfigDict(json.load(f))
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{path}: corrupt JSON ({e})") from e
