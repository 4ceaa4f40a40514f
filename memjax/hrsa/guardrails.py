"""HRSA guardrails: slot diversity (sim_gap), delta_zero, collapse detection.

sim_gap = min(1 - within, 1 - across) where, over L2-normalised slots,
  within = mean cosine between distinct slots of the same example,
  across = mean cosine between the same slot of different examples.
It is 0 when every slot of an example is the same vector (collapse inside an example)
and 0 when the memory does not depend on the input (collapse across examples); a
diverse, input-dependent memory sits near 1.

Collapse: sim_gap below `min_sim_gap` or delta_zero below `min_delta_zero` for
`patience` consecutive steps after `warmup` steps. The state that counts them is the
system's `aux` pytree carried by the training loop (`GuardState`); the check prints a
warning and, with `stop`, sets metrics["stop"] so the loop stops with
TrainingStopped, the last good checkpoint intact.
"""
from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp


def _unit(x):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def slot_similarities(slots_BxSxD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(within, across) mean cosines; see the module docstring."""
  u = _unit(slots_BxSxD)
  b, s, _ = u.shape
  gram_BxSxS = jnp.einsum("bsd,btd->bst", u, u)
  within = (gram_BxSxS.sum((1, 2)) - jnp.trace(gram_BxSxS, axis1=1, axis2=2)) / max(s * (s - 1), 1)
  per_slot_SxBxB = jnp.einsum("bsd,csd->sbc", u, u)
  across = (per_slot_SxBxB.sum((1, 2)) - jnp.trace(per_slot_SxBxB, axis1=1, axis2=2)) / max(
      b * (b - 1), 1)
  return within.mean(), across.mean()


def sim_gap(slots_BxSxD: jax.Array) -> jax.Array:
  within, across = slot_similarities(slots_BxSxD)
  return jnp.minimum(1.0 - within, 1.0 - across)


def delta_zero(loss_zeroed: jax.Array, loss_memory: jax.Array) -> jax.Array:
  """Loss with memory zeroed / loss with memory (1.0: the memory is useless)."""
  return loss_zeroed / jnp.maximum(loss_memory, 1e-9)


@dataclasses.dataclass(frozen=True)
class CollapseConfig:
  min_sim_gap: float = 0.05
  min_delta_zero: float = 1.05
  warmup: int = 500
  patience: int = 50
  stop: bool = False


@flax.struct.dataclass
class GuardState:
  """The step and the count of consecutive bad steps (the loop's `aux` slot, not memory)."""
  step: jax.Array
  bad: jax.Array

  @classmethod
  def init(cls) -> GuardState:
    return cls(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def check_collapse(state: GuardState, gap: jax.Array, dz: jax.Array, cfg: CollapseConfig):
  """Returns (new state, collapsed flag); warns once when the flag turns on."""
  bad_now = (gap < cfg.min_sim_gap) | (dz < cfg.min_delta_zero)
  armed = state.step >= cfg.warmup
  bad = jnp.where(bad_now & armed, state.bad + 1, 0)
  collapsed = bad >= cfg.patience

  def warn(step, g, d):
    print(f"WARNING hrsa guardrail: memory collapse at step {int(step)}: sim_gap {float(g):.4f} "
          f"(min {cfg.min_sim_gap}), delta_zero {float(d):.4f} (min {cfg.min_delta_zero}) for "
          f"{cfg.patience} steps" + ("; stopping" if cfg.stop else ""), flush=True)

  jax.lax.cond(bad == cfg.patience,
               lambda: jax.debug.callback(warn, state.step, gap, dz), lambda: None)
  return GuardState(state.step + 1, bad), collapsed
