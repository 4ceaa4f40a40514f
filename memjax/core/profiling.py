"""XLA op times of a jitted call, from a jax.profiler trace: each op's time per call with its
HLO shape and the JAX operation it came from, and the op's kind (experiments/profile_step.py,
experiments/profile_encoder.py).

Durations are wall time per op as the trace records it: on a machine shared with other jobs
they include descheduling; ops can overlap on several threads, so their sum can exceed the
call's time; a cond's own entry holds the ops inside it (listed too; while loops' are left out).
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import re
import tempfile

import jax

# Host-side and executor spans, and loop bodies' containers (their ops are counted): not ops.
_NOT_OPS = ("ThunkExecutor", "$", "SlinkyThreadPool", "PjitFunction", "ExecuteReplicated",
            "CommonPjRtLoadedExecutable", "ParseArguments", "while", "call")


@dataclasses.dataclass(frozen=True)
class Op:
  name: str      # the HLO instruction (e.g. copy_bitcast_fusion.86)
  shape: str     # its HLO result shape
  origin: str    # the JAX operation it came from (op_name metadata)
  ms: float      # time per call


def op_times(call, hlo: str, *, calls: int = 5) -> list[Op]:
  """Ops of `hlo` (the compiled call's as_text()) by time per call, largest first, from a trace
  of `calls` runs of `call()` (which runs the jitted function once and returns its outputs)."""
  for _ in range(2):
    jax.block_until_ready(call())
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    for _ in range(calls):
      out = call()
    jax.block_until_ready(out)
    jax.profiler.stop_trace()
    trace = json.load(gzip.open(glob.glob(f"{d}/**/*.json.gz", recursive=True)[0]))
  total = collections.Counter()
  for e in trace["traceEvents"]:
    if e.get("ph") == "X" and not e["name"].startswith(_NOT_OPS) and "(" not in e["name"]:
      total[e["name"]] += e["dur"]
  ops = []
  for name, us in total.most_common():
    found = re.search(r"%" + re.escape(name) + r" = (\S+).*?op_name=\"([^\"]*)\"", hlo)
    shape, origin = found.groups() if found else ("", "")
    ops.append(Op(name, shape, origin, us / calls / 1e3))
  return ops


def kind(op: Op) -> str:
  """The op's kind from its XLA name and origin (YNN fusions hold matmuls and reductions)."""
  name = op.name
  if "reduce" in op.origin.rsplit("/", 1)[-1] or "reduce" in name:
    return "reductions"
  if name.startswith(("ynn_fusion", "dot", "xnn")):
    return "matmuls (dot, ynn fusions)"
  if name.startswith(("copy", "transpose", "bitcast_transpose", "wrapped_copy")):
    return "layout copies (+ fused elementwise)"
  if any(w in name for w in ("scatter", "gather", "dynamic")):
    return "gather, scatter, dynamic slices"
  if name.startswith(("cond", "conditional")):
    return "conds (their ops listed too)"
  return "other elementwise fusions"


def by_kind(ops: list[Op]) -> collections.Counter:
  out = collections.Counter()
  for op in ops:
    out[kind(op)] += op.ms
  return out


def family(op: Op) -> str:
  """An op's name without its number, and the last part of its origin: the key that matches
  the same work across two compilations (e.g. one model at two input lengths)."""
  base = re.sub(r"[.]\d+$", "", op.name)
  return f"{base} | {op.origin.rsplit('/', 1)[-1][:40]}"
