"""The yardstick on hand-made numbers."""
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.core import yardstick


def test_answer_accuracy_needs_every_token_of_an_answer():
  targets = jnp.array([[1, 2, 3, 4]])
  answer = jnp.array([[0, 1, 1, 2]])             # answer 1: tokens 1-2, answer 2: token 3
  logits = jnp.eye(5)[jnp.array([[0, 2, 0, 4]])]  # token 2 of answer 1 wrong
  correct, count = yardstick.answer_accuracy(logits, targets, answer, 2)
  assert (float(correct), float(count)) == (1.0, 2.0)


def test_memory_cosine_collapsed_and_orthogonal():
  assert float(yardstick.memory_cosine(jnp.ones((4, 3)))) == pytest.approx(1.0)
  assert float(yardstick.memory_cosine(jnp.eye(4))) == pytest.approx(0.0)


def test_evaluate_assembles_keys_and_delta_zero():
  def fn(params, batch, mode):
    if mode == "oracle":
      raise NotImplementedError
    correct = {"memory": 9.0, "zeroed": 1.0, "shuffled": 1.0, "no_memory": 1.0}[mode]
    loss = {"memory": 0.5, "zeroed": 2.0, "shuffled": 2.5, "no_memory": 2.0}[mode]
    out = {"correct": correct, "count": 10.0, "loss": loss}
    if mode == "memory":
      out["memory"] = jnp.eye(3)
    return out
  r = yardstick.evaluate(fn, None, [None, None], chance=0.1)
  assert r["accuracy"] == 0.9 and r["accuracy_memory_zeroed"] == 0.1
  assert r["accuracy_oracle"] is None and r["delta_zero"] == pytest.approx(4.0)
  assert r["memory_cosine"] == pytest.approx(0.0)
  assert set(yardstick.KEYS) <= set(r)
  assert yardstick.memory_used(r)
  assert not yardstick.memory_used(dict(r, accuracy_memory_shuffled=0.5))
  assert not yardstick.memory_used(dict(r, accuracy=0.5))
  assert "memory used" in yardstick.format_table(r)
