"""Checkpoints: train state (params, optimizer, rng, persistent memory) and the data
iterator's position, saved together by orbax so a resumed run continues bit-identically.

orbax writes each step into a temporary directory and renames it when complete,
so a run killed mid-save leaves the previous checkpoint as the latest one.
"""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A checkpoint directory is missing, empty or unreadable."""


def manager(workdir: str, *, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  if read_only and not os.path.isdir(path):
    raise CheckpointError(f"{workdir}: no checkpoints directory (expected {path})")
  return ocp.CheckpointManager(
      path,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           cleanup_tmp_directories=not read_only,
                                           read_only=read_only),
      item_names=("state", "data"))


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: dict) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=ocp.args.JsonSave(data_state)))


def latest_step(mngr: ocp.CheckpointManager) -> int | None:
  return mngr.latest_step()


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Returns (state, data_state) of `step` (default: latest complete checkpoint)."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"{mngr.directory}: no complete checkpoint found")
  try:
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types for damaged files; name the step and dir
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CheckpointError(f"{mngr.directory}/{step}: checkpoint is unreadable ({msg[:200]})") from e
  return out.state, out.data


def abstract(tree):
  """ShapeDtypeStructs (with shardings) of a concrete tree, to restore against."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def save_config(workdir: str, config) -> None:
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, "config.json.tmp")
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, os.path.join(workdir, "config.json"))


def load_config(workdir: str):
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{workdir}: no config.json (not a memjax workdir?)")
  with open(path) as f:
    try:
      return ml_collections.ConfigDict(json.load(f))
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{path}: corrupt JSON ({e})") from e
