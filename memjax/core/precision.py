"""Mixed precision for training: float32 master params, forward and backward in a compute dtype.

`train.compute_dtype` = "float32" (default: the loss function is returned unchanged, so the
float32 path is the same program as without the switch) or "bfloat16": inside the jitted
step every floating leaf of params, batch and carried memory is cast to bfloat16 at the start
of the loss; the gradient flows back through the cast (its transpose casts back up), so the
optimizer sees float32 gradients and updates float32 params. What must stay float32 does so
in the layers themselves: attention scores and softmax (memjax.layers.attend), RMSNorm
statistics, RoPE angles, the cross-entropy (memjax.core.losses upcasts the logits). The loss
and metrics leave as float32; the memory leaves in the dtype it came in, so the state a
scan carries keeps its type. The yardstick evaluates the float32 params in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")


def _is_float(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def cast_floats(tree, dtype):
  """Every floating leaf of `tree` as `dtype`; ints, bools and keys untouched."""
  return jax.tree.map(lambda x: x.astype(dtype) if _is_float(x) else x, tree)


def with_compute_dtype(loss_fn, compute_dtype: str = "float32"):
  """loss_fn(params, batch, memory, aux, rng), run in `compute_dtype` (see module doc)."""
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
  if compute_dtype == "float32":
    return loss_fn
  dtype = jnp.dtype(compute_dtype)

  def loss(params, batch, memory, aux, rng):
    # aux (guard counters, running statistics) is training state, not compute: left as is.
    l, (metrics, new_memory, new_aux) = loss_fn(cast_floats(params, dtype),
                                                cast_floats(batch, dtype),
                                                cast_floats(memory, dtype), aux, rng)
    new_memory = jax.tree.map(lambda n, o: n.astype(o.dtype) if _is_float(o) else n,
                              new_memory, memory)
    return l.astype(jnp.float32), (cast_floats(metrics, jnp.float32), new_memory, new_aux)

  return loss


def matmul_flops_by_dtype(fn, *args) -> dict[str, float]:
  """FLOPs of every dot_general in fn's jaxpr (forward and backward, if fn takes a gradient),
  keyed by the operands' dtype ("bfloat16", "float32", mixed as "bfloat16*float32"); a scan
  body counts `length` times. For checking which precision a step actually computes in."""
  out: dict[str, float] = {}

  def walk(jaxpr, mult):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        a, b = (v.aval for v in eqn.invars)
        (ca, _), (ba, _) = eqn.params["dimension_numbers"]
        contract = 1
        for i in ca:
          contract *= a.shape[i]
        flops = 2.0 * contract * eqn.outvars[0].aval.size
        key = "*".join(sorted({a.dtype.name, b.dtype.name}))
        out[key] = out.get(key, 0.0) + mult * flops
      m = mult * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (tuple, list)) else (p,)):
          if hasattr(sub, "jaxpr") and hasattr(sub, "consts"):   # ClosedJaxpr
            walk(sub.jaxpr, m)
          elif hasattr(sub, "eqns"):                               # Jaxpr
            walk(sub, m)

  walk(jax.make_jaxpr(fn)(*args).jaxpr, 1)
  return out


def follow_inputs(args, /, *, dtype=None, inexact=True):
  """A `promote_dtype` for nnx.Embed that computes in the dtype of what it is given.

  nnx.Embed (flax 0.12) fixes `dtype` to its param dtype at construction, so params cast to
  bfloat16 inside the loss would be cast back up to float32 at every lookup. This ignores
  that fixed dtype and promotes the arguments among themselves: with float32 params it is
  the same computation as nnx's own promote_dtype."""
  del dtype
  present = [x for x in args if x is not None]
  to = jnp.result_type(*present)
  if inexact and not jnp.issubdtype(to, jnp.inexact):
    to = jnp.promote_types(jnp.float32, to)
  return tuple(None if x is None else jnp.asarray(x, to) for x in args)
