"""x @ w whose weight gradient is a plain matmul: x transposed into its own buffer first.

Autodiff's weight gradient sum_n x[n, d] g[n, h] contracts the leading (token) axis of both
operands; XLA's CPU backend runs that transposed-operand dot up to 1.8x slower than the same
product with x^T materialised (2.29 -> 1.26 ms for a [1024, 256] input and 1024 outputs;
BUILD_NOTES issue 16). The barrier keeps XLA from folding the transpose back into the dot.
Not for a Linear whose input is an activation (an MLP's down projection): the transposed copy
then fuses with the activation into a strided loop slower than autodiff's own dot, so
GatedMLP's and hrm.MLP's down projections keep lax.dot_general.
Same values; gradients within float rounding. Reverse mode only (a custom_vjp).
"""
import jax
from flax import nnx
from jax import lax


@jax.custom_vjp
def matmul(x_NxD: jax.Array, w_DxH: jax.Array) -> jax.Array:
  """x @ w over x's last axis (any leading axes)."""
  return x_NxD @ w_DxH


def _fwd(x, w):
  return x @ w, (x, w)


def _bwd(res, g):
  x, w = res
  x_DxN = lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)
  dw = x_DxN @ g.reshape(-1, g.shape[-1])
  return (g @ w.T).astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_fwd, _bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                out_sharding=None):
  """`nnx.Linear(dot_general=...)`: `matmul` for a Linear's own contraction (last axis of the
  inputs with the kernel's first, default precision), lax.dot_general otherwise."""
  plain = (((lhs.ndim - 1,), (0,)), ((), ()))
  if (dimension_numbers == plain and rhs.ndim == 2 and precision is None
      and preferred_element_type is None and out_sharding is None):
    return matmul(lhs, rhs)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type,
                             out_sharding=out_sharding)


def Linear(*args, **kwargs) -> nnx.Linear:   # pylint: disable=invalid-name
  """nnx.Linear whose matmul is `matmul` above (same parameters, same values)."""
  return nnx.Linear(*args, dot_general=dot_general, **kwargs)
