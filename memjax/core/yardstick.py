"""The memory-use yardstick: the same keys and table for every memory system.

A memory is "used" when `accuracy` is high while the zeroed and shuffled
accuracies sit near `chance` (DESIGN.md).
"""
from __future__ import annotations

import functools
import json
import math
import os
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from memjax.core import memory as memory_lib
from memjax.core.system import bind

MODES = ("memory", "zeroed", "shuffled", "no_memory", "oracle")
KEYS = ("accuracy", "accuracy_memory_zeroed", "accuracy_memory_shuffled", "accuracy_no_memory",
        "accuracy_oracle", "chance", "delta_zero", "memory_cosine")
_MODE_KEY = {"memory": "accuracy", "zeroed": "accuracy_memory_zeroed",
             "shuffled": "accuracy_memory_shuffled", "no_memory": "accuracy_no_memory",
             "oracle": "accuracy_oracle"}


def memory_cosine(memory_BxM: jax.Array) -> jax.Array:
  """Mean pairwise cosine between examples' memory states (near 1: collapsed)."""
  m = memory_BxM.reshape(memory_BxM.shape[0], -1).astype(jnp.float32)
  m = m / jnp.maximum(jnp.linalg.norm(m, axis=-1, keepdims=True), 1e-12)
  sim = m @ m.T
  b = m.shape[0]
  return (sim.sum() - jnp.trace(sim)) / max(b * (b - 1), 1)


def mode_outputs(system, params, batch) -> dict:
  """{mode: {"correct", "count", "loss"}} for one batch, every mode from one ingest.

  The ablations are the memory protocol's (memjax.core.memory), the same for every design:
  zeroed and shuffled change the ingested memory, no_memory answers with none at all."""
  if system.ingest is None:
    return {"memory": system.answer(params, batch, None)}
  mem = system.ingest(params, batch)
  out = {"memory": dict(system.answer(params, batch, mem), memory=memory_lib.flat(mem)),
         "zeroed": system.answer(params, batch, memory_lib.zeroed(mem)),
         "shuffled": system.answer(params, batch, memory_lib.shuffled(mem)),
         "no_memory": system.answer(params, batch, None)}
  if system.oracle is not None:
    out["oracle"] = system.oracle(params, batch)
  return out


@functools.lru_cache(maxsize=16)
def _jitted_modes(system):
  return jax.jit(lambda params, batch, frozen: mode_outputs(bind(system, frozen), params, batch))


def evaluate(system, params, batches: Iterable, chance: float) -> dict:
  """The yardstick over the batches: every mode of `mode_outputs`, compiled once per system."""
  fn = _jitted_modes(system)
  sums = {m: {"correct": 0.0, "count": 0.0, "loss": 0.0, "n": 0} for m in MODES}
  cosines = []
  for batch in batches:
    for mode, out in fn(params, batch, system.frozen).items():
      s = sums[mode]
      s["correct"] += float(out["correct"])
      s["count"] += float(out["count"])
      s["loss"] += float(out["loss"])
      s["n"] += 1
      if "memory" in out:
        cosines.append(float(memory_cosine(out["memory"])))
  results = {k: None for k in KEYS}
  for mode in MODES:
    s = sums[mode]
    if s["count"] > 0:
      results[_MODE_KEY[mode]] = s["correct"] / s["count"]
  results["chance"] = float(chance)
  if sums["memory"]["n"] and sums["zeroed"]["n"]:
    results["delta_zero"] = (sums["zeroed"]["loss"] / sums["zeroed"]["n"]) / max(
        sums["memory"]["loss"] / sums["memory"]["n"], 1e-12)
  for mode in MODES:
    if sums[mode]["n"]:
      results[f"loss_{mode}"] = sums[mode]["loss"] / sums[mode]["n"]
  if cosines:
    results["memory_cosine"] = float(np.mean(cosines))
  return results


def memory_used(results: dict, *, min_accuracy: float = 0.9, margin: float = 0.05) -> bool:
  """The verdict: high accuracy, zeroed and shuffled no more than `margin` above chance.

  Below chance counts as near it: a generative exact-match task can score 0 without its memory,
  which shows the memory is needed as plainly as scoring chance does. Where the task reports
  `baseline_shuffled` (what a reader that answers from the memory it is given scores with
  another example's memory: that memory may hold the asked fact), shuffled is held to the
  larger of the two."""
  acc, z, s, c = (results.get(k) for k in ("accuracy", "accuracy_memory_zeroed",
                                            "accuracy_memory_shuffled", "chance"))
  if None in (acc, z, s, c):
    return False
  s_base = max(c, results.get("baseline_shuffled") or 0.0)
  return acc >= min_accuracy and z <= c + margin and s <= s_base + margin


def format_table(results: dict) -> str:
  rows = [(k, results.get(k)) for k in KEYS]
  rows += sorted((k, v) for k, v in results.items() if k not in KEYS)
  width = max(len(k) for k, _ in rows)
  fmt = lambda v: "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
  lines = [f"{'memory-use yardstick'.ljust(width)}  value", "-" * (width + 10)]
  lines += [f"{k.ljust(width)}  {fmt(v)}" for k, v in rows if not isinstance(v, (dict, list))]
  lines.append(f"{'memory used'.ljust(width)}  {'yes' if memory_used(results) else 'NO'}")
  return "\n".join(lines)


def write_results(workdir: str, results: dict) -> str:
  """Writes <workdir>/results.json atomically (never a half-written file)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "results.json")
  tmp = path + ".tmp"
  clean = json.loads(json.dumps(results, default=_jsonable))
  with open(tmp, "w") as f:
    json.dump(clean, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path


def _jsonable(x):
  if isinstance(x, (np.generic, jax.Array)):
    v = np.asarray(x).tolist()
    return None if isinstance(v, float) and not math.isfinite(v) else v
  raise TypeError(f"not JSON serialisable: {type(x)}")
