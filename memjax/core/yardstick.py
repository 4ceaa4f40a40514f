"""The memory-use yardstick: the same keys and table for every memory system.

A memory is "used" when `accuracy` is high while the zeroed and shuffled
accuracies sit near `chance` (DESIGN.md).
"""
from __future__ import annotations

import json
import math
import os
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("memory", "zeroed", "shuffled", "no_memory", "oracle")
KEYS = ("accuracy", "accuracy_memory_zeroed", "accuracy_memory_shuffled", "accuracy_no_memory",
        "accuracy_oracle", "chance", "delta_zero", "memory_cosine")
_MODE_KEY = {"memory": "accuracy", "zeroed": "accuracy_memory_zeroed",
             "shuffled": "accuracy_memory_shuffled", "no_memory": "accuracy_no_memory",
             "oracle": "accuracy_oracle"}


def answer_accuracy(logits_BxTxV: jax.Array, targets_BxT: jax.Array, answer_BxT: jax.Array,
                    max_answers: int) -> tuple[jax.Array, jax.Array]:
  """(answers fully right, answers present): an answer counts when all its tokens are right."""
  wrong = (jnp.argmax(logits_BxTxV, -1) != targets_BxT) & (answer_BxT > 0)
  ids = jax.nn.one_hot(answer_BxT - 1, max_answers, dtype=jnp.int32)          # BxTxA, 0 if none
  present = ids.sum(1) > 0                                                    # BxA
  any_wrong = (ids * wrong[..., None]).sum(1) > 0
  return (present & ~any_wrong).sum().astype(jnp.float32), present.sum().astype(jnp.float32)


def answer_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array, answer_BxT: jax.Array) -> jax.Array:
  """Mean cross-entropy over scored positions."""
  logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, targets_BxT[..., None], -1)[..., 0]
  w = (answer_BxT > 0).astype(jnp.float32)
  return (nll * w).sum() / jnp.maximum(w.sum(), 1.0)


def memory_cosine(memory_BxM: jax.Array) -> jax.Array:
  """Mean pairwise cosine between examples' memory states (near 1: collapsed)."""
  m = memory_BxM.reshape(memory_BxM.shape[0], -1).astype(jnp.float32)
  m = m / jnp.maximum(jnp.linalg.norm(m, axis=-1, keepdims=True), 1e-12)
  sim = m @ m.T
  b = m.shape[0]
  return (sim.sum() - jnp.trace(sim)) / max(b * (b - 1), 1)


def evaluate(evaluate_fn: Callable, params, batches: Iterable, chance: float,
             modes: Iterable[str] = MODES) -> dict:
  """Runs `evaluate_fn(params, batch, mode)` over the batches and assembles the yardstick.

  A mode whose evaluate_fn raises NotImplementedError (no oracle defined) reports None.
  """
  sums = {m: {"correct": 0.0, "count": 0.0, "loss": 0.0, "n": 0} for m in modes}
  cosines = []
  skipped = set()
  for batch in batches:
    for mode in modes:
      if mode in skipped:
        continue
      try:
        out = evaluate_fn(params, batch, mode)
      except NotImplementedError:
        skipped.add(mode)
        continue
      s = sums[mode]
      s["correct"] += float(out["correct"])
      s["count"] += float(out["count"])
      s["loss"] += float(out["loss"])
      s["n"] += 1
      if mode == "memory" and "memory" in out:
        cosines.append(float(memory_cosine(out["memory"])))
  results = {k: None for k in KEYS}
  for mode in modes:
    s = sums[mode]
    if mode not in skipped and s["count"] > 0:
      results[_MODE_KEY[mode]] = s["correct"] / s["count"]
  results["chance"] = float(chance)
  if "zeroed" in modes and sums["memory"]["n"] and sums["zeroed"]["n"]:
    results["delta_zero"] = (sums["zeroed"]["loss"] / sums["zeroed"]["n"]) / max(
        sums["memory"]["loss"] / sums["memory"]["n"], 1e-12)
  for mode in modes:
    if sums[mode]["n"]:
      results[f"loss_{mode}"] = sums[mode]["loss"] / sums[mode]["n"]
  if cosines:
    results["memory_cosine"] = float(np.mean(cosines))
  return results


def memory_used(results: dict, *, min_accuracy: float = 0.9, margin: float = 0.05) -> bool:
  """The verdict: high accuracy, zeroed and shuffled no more than `margin` above chance.

  Below chance counts as near it: a generative exact-match task can score 0 without its memory,
  which shows the memory is needed as plainly as scoring chance does."""
  acc, z, s, c = (results.get(k) for k in ("accuracy", "accuracy_memory_zeroed",
                                            "accuracy_memory_shuffled", "chance"))
  if None in (acc, z, s, c):
    return False
  return acc >= min_accuracy and z <= c + margin and s <= c + margin


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
