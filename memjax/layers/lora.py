"""LoRA: low-rank adapters on frozen kernels, zero-initialised and mergeable.

A targeted kernel W (fan_in x fan_out, or N x fan_in x fan_out for N stacked layers) reads
    y = x W + scale * (x A) B,     A: fan_in x r (random),  B: r x fan_out (zeros at init)
so an untrained adapter is the frozen layer exactly (B = 0 adds exact zeros), and merging
W' = W + scale * A B gives the same function with no extra cost at inference.

    lora = init(rng, frozen_state, targets=("q", "v"), rank=8)   # {path: Adapter}
    merged = merge(frozen_state, lora, scale)                      # same pytree as frozen_state
    y = apply(x, kernel, lora[path], scale)                        # the unmerged form

`frozen_state` is any pytree of kernels (an nnx.State, a dict); adapters are keyed by the
'/'-joined path of each kernel whose path contains one of `targets` (e.g. "attn/q/kernel").
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Adapter:
  a: jax.Array   # [N x] fan_in x r
  b: jax.Array   # [N x] r x fan_out


def _path_str(path) -> str:
  parts = []
  for k in path:
    k = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
    parts.append(str(k))
  return "/".join(p for p in parts if p not in ("value", "raw_value"))


def targeted(frozen_state, targets) -> dict[str, jax.Array]:
  """{path: kernel} for every kernel (ndim >= 2, name 'kernel') under a targeted module name."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(frozen_state)[0]:
    p = _path_str(path)
    parts = p.split("/")
    if parts[-1] == "kernel" and jnp.ndim(leaf) >= 2 and any(t in parts[:-1] for t in targets):
      out[p] = leaf
  return out


def init(rng: jax.Array, frozen_state, *, targets, rank: int, dtype=jnp.float32,
         b_std: float = 0.0) -> dict:
  """Adapters for every targeted kernel: A ~ N(0, 1/fan_in), B = 0 (or N(0, b_std^2): with
  B = 0 on both the query and the key side, their product has no gradient at init, a saddle a
  new query-key match must first leave)."""
  kernels = targeted(frozen_state, targets)
  if not kernels:
    raise ValueError(f"no kernel matches the LoRA targets {tuple(targets)}")
  out = {}
  for i, (p, w) in enumerate(sorted(kernels.items())):
    *lead, fan_in, fan_out = w.shape
    a = jax.random.normal(jax.random.fold_in(rng, i), (*lead, fan_in, rank), dtype)
    b = jnp.zeros((*lead, rank, fan_out), dtype)
    if b_std:
      b = b_std * jax.random.normal(jax.random.fold_in(jax.random.fold_in(rng, i), 1), b.shape,
                                    dtype)
    out[p] = Adapter(a=a * fan_in ** -0.5, b=b)
  return out


def delta(adapter: Adapter, scale: float) -> jax.Array:
  return scale * jnp.einsum("...ir,...ro->...io", adapter.a, adapter.b)


def merge(frozen_state, lora: dict, scale: float):
  """frozen_state with W + scale * A B at every adapted kernel (same structure and dtypes)."""
  def one(path, leaf):
    ad = lora.get(_path_str(path))
    return leaf if ad is None else leaf + delta(ad, scale).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(one, frozen_state)


def apply(x: jax.Array, kernel: jax.Array, adapter: Adapter | None, scale: float) -> jax.Array:
  """The unmerged form for one (unstacked) kernel: x W + scale * (x A) B."""
  y = x @ kernel
  if adapter is None:
    return y
  return y + scale * ((x @ adapter.a) @ adapter.b)
