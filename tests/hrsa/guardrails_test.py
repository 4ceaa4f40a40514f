"""Guardrail metrics on hand-made cases."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.core import losses
from memjax.hrsa import guardrails


def test_identical_slots_give_zero_sim_gap():
  slots = jnp.ones((4, 6, 8))
  assert float(guardrails.sim_gap(slots)) == pytest.approx(0.0, abs=1e-6)


def test_input_independent_memory_gives_zero_sim_gap():
  per_slot = jnp.eye(6, 8)                                 # distinct slots, same in every example
  slots = jnp.broadcast_to(per_slot, (4, 6, 8))
  within, across = guardrails.slot_similarities(slots)
  assert float(within) == pytest.approx(0.0, abs=1e-6)
  assert float(across) == pytest.approx(1.0, abs=1e-6)
  assert float(guardrails.sim_gap(slots)) == pytest.approx(0.0, abs=1e-6)


def test_orthogonal_slots_give_sim_gap_one():
  slots = jnp.eye(24).reshape(4, 6, 24)                    # every slot of every example orthogonal
  assert float(guardrails.sim_gap(slots)) == pytest.approx(1.0, abs=1e-6)


def test_delta_zero_and_exact_match():
  assert float(guardrails.delta_zero(jnp.float32(3.0), jnp.float32(1.5))) == pytest.approx(2.0)
  logits = jnp.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
  c, n = losses.exact_match(logits, jnp.array([1, 1, 1]), jnp.array([True, True, False]))
  assert (float(c), float(n)) == (1.0, 2.0)


def test_collapse_flag_after_patience_and_reset():
  cfg = guardrails.CollapseConfig(min_sim_gap=0.1, min_delta_zero=1.05, warmup=2, patience=3)
  state = guardrails.GuardState.init()
  flags = []
  for step in range(8):
    gap = jnp.float32(0.0 if step < 7 else 0.5)
    state, collapsed = guardrails.check_collapse(state, gap, jnp.float32(3.0), cfg)
    flags.append(bool(collapsed))
  # bad from step 2 (warmup), flagged from the third bad step, cleared by a good step
  assert flags == [False, False, False, False, True, True, True, False]
