"""Matmul FLOPs of a function, counted from its jaxpr (for MFU figures).

Counts 2 x (output elements) x (contracted size) for every dot_general and convolution the
function traces, forward and backward alike when given a gradient step; a scan's body counts
`length` times, a cond its costliest branch, a while loop's body once (its trip count is not
known when tracing: `count.while_loops` says how many were met). Elementwise work is not
counted: the figure is the model FLOPs an MFU is quoted against.
"""
from __future__ import annotations

import dataclasses
import math

import jax
from jax.extend import core as jcore


@dataclasses.dataclass
class Count:
  flops: float = 0.0
  while_loops: int = 0


def _sub_jaxprs(eqn):
  for v in eqn.params.values():
    vals = v if isinstance(v, (tuple, list)) else (v,)
    for x in vals:
      if isinstance(x, jcore.ClosedJaxpr):
        yield x.jaxpr
      elif isinstance(x, jcore.Jaxpr):
        yield x


def _count(jaxpr, out: Count) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      k = math.prod(lhs[d] for d in lc)
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / rhs[0]
    elif name == "scan":
      total += eqn.params["length"] * _count(eqn.params["jaxpr"].jaxpr, out)
    elif name == "cond":
      total += max(_count(b.jaxpr, out) for b in eqn.params["branches"])
    elif name == "while":
      out.while_loops += 1
      total += _count(eqn.params["body_jaxpr"].jaxpr, out)
    else:
      total += sum(_count(j, out) for j in _sub_jaxprs(eqn))
  return total


def matmul_flops(fn, *args, **kwargs) -> Count:
  """The matmul FLOPs of one call fn(*args, **kwargs) (arrays or ShapeDtypeStructs)."""
  out = Count()
  out.flops = _count(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr, out)
  return out
