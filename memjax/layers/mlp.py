"""Gated feed-forward blocks (SwiGLU, GeGLU), and a token-blocked way to apply them."""
import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


class GatedMLP(nnx.Module):
  """down(act(gate(x)) * up(x)): SwiGLU with act='silu', GeGLU with act='gelu_tanh'."""

  def __init__(self, dim: int, hidden: int, *, act: str = "silu", use_bias: bool = False,
               fuse_gate_up: bool = False, rngs: nnx.Rngs, dtype=None,
               param_dtype=jnp.float32, dot_general=jax.lax.dot_general):
    """fuse_gate_up: gate and up as one matmul over their kernels concatenated at use (the
    same parameters; one wider matmul instead of two: THEN's step 9-10% faster on the 2-core
    CPU, BUILD_NOTES issue 16); without bias only. dot_general: gate's and up's (e.g.
    memjax.layers.dense.dot_general); down always takes lax.dot_general."""
    if act not in ACTIVATIONS:
      raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    if fuse_gate_up and use_bias:
      raise ValueError("a fuse_gate_up GatedMLP has no bias")
    self.act = act
    self.fuse_gate_up = fuse_gate_up
    kw = dict(use_bias=use_bias, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
              dot_general=dot_general)
    self.gate = nnx.Linear(dim, hidden, **kw)
    self.up = nnx.Linear(dim, hidden, **kw)
    # Down's input is the activation product: not for dense (memjax.layers.dense).
    self.down = nnx.Linear(hidden, dim, **dict(kw, dot_general=jax.lax.dot_general))

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.fuse_gate_up:
      return self._fused(x)
    return self.down(ACTIVATIONS[self.act](self.gate(x)) * self.up(x))

  def _fused(self, x: jax.Array) -> jax.Array:
    w = jnp.concatenate([self.gate.kernel[...], self.up.kernel[...]], axis=1)
    xx, w = self.gate.promote_dtype((x, w), dtype=self.gate.dtype)   # as nnx.Linear does
    gate, up = jnp.split(self.gate.dot_general(xx, w, (((xx.ndim - 1,), (0,)), ((), ()))), 2,
                         axis=-1)
    return self.down(ACTIVATIONS[self.act](gate) * up)


def blockwise(fn, x_BxNxD: jax.Array, block: int) -> jax.Array:
  """fn over the tokens of x in blocks of `block` (lax.map), for a per-token `fn`.

  Same result as fn(x); its intermediates (an MLP's BxNx4D hidden layer) then stay in cache:
  on the 2-core CPU a 64-wide GatedMLP took 22x as long at 16k tokens as at 2k, blocked 7.8x.
  `block` <= 0, or a sequence no longer than it, applies fn directly. A ragged tail is padded.
  """
  b, n, d = x_BxNxD.shape
  if block <= 0 or n <= block:
    return fn(x_BxNxD)
  nb = -(-n // block)
  xp = jnp.pad(x_BxNxD, ((0, 0), (0, nb * block - n), (0, 0)))
  xs = jnp.moveaxis(xp.reshape(b, nb, block, d), 1, 0)
  out = jax.lax.map(fn, xs)
  return jnp.moveaxis(out, 0, 1).reshape(b, nb * block, -1)[:, :n]
