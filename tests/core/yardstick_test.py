"""The yardstick and the memory protocol on hand-made numbers."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.core import losses
from memjax.core import memory as memory_lib
from memjax.core import yardstick
from memjax.core.system import System


def test_answer_accuracy_needs_every_token_of_an_answer():
  targets = jnp.array([[1, 2, 3, 4]])
  answer = jnp.array([[0, 1, 1, 2]])             # answer 1: tokens 1-2, answer 2: token 3
  logits = jnp.eye(5)[jnp.array([[0, 2, 0, 4]])]  # token 2 of answer 1 wrong
  correct, count = losses.answer_accuracy(logits, targets, answer, 2)
  assert (float(correct), float(count)) == (1.0, 2.0)


def test_memory_cosine_collapsed_and_orthogonal():
  assert float(yardstick.memory_cosine(jnp.ones((4, 3)))) == pytest.approx(1.0)
  assert float(yardstick.memory_cosine(jnp.eye(4))) == pytest.approx(0.0)


@flax.struct.dataclass
class _Mem:
  value_B: jax.Array
  seen_B: jax.Array    # bool flag: an auxiliary leaf that must be emptied too


def test_protocol_defaults():
  m = _Mem(jnp.array([1.0, 2.0, 3.0]), jnp.array([True, True, False]))
  z = memory_lib.zeroed(m)
  assert z.value_B.tolist() == [0, 0, 0] and z.seen_B.tolist() == [False] * 3
  s = memory_lib.shuffled(m)
  assert s.value_B.tolist() == [3, 1, 2] and s.seen_B.tolist() == [False, True, True]
  one = _Mem(jnp.array([5.0]), jnp.array([True]))
  assert memory_lib.shuffled(one) == one                       # batch 1: identity
  assert memory_lib.flat(m).shape == (3, 1)                      # floating leaves only
  r = memory_lib.reset(m, jnp.array([False, True, False]))
  assert r.value_B.tolist() == [1, 0, 3] and r.seen_B.tolist() == [True, False, False]


def test_protocol_override_is_called():
  @flax.struct.dataclass
  class Custom:
    x: jax.Array

    def zeroed(self):
      return Custom(jnp.full_like(self.x, 7.0))

  assert memory_lib.zeroed(Custom(jnp.ones(2))).x.tolist() == [7, 7]


def _system(oracle=False):
  """Memory = the batch's digit; the answer is right when the memory holds the target."""
  def ingest(params, batch):
    return _Mem(batch["x"].astype(jnp.float32), jnp.ones_like(batch["x"], bool))

  def answer(params, batch, mem):
    v = jnp.zeros_like(batch["y"], jnp.float32) if mem is None else mem.value_B
    right = (v == batch["y"]) & (mem is not None and mem.seen_B).astype(bool) \
        if mem is not None else v == batch["y"]
    loss = jnp.mean((v - batch["y"]) ** 2) + 0.5
    return {"correct": right.sum(), "count": float(v.shape[0]), "loss": loss}

  orc = (lambda p, b: {"correct": b["y"].shape[0], "count": b["y"].shape[0], "loss": 0.1}) \
      if oracle else None
  return System(init=None, loss=None, ingest=ingest, answer=answer, oracle=orc)


def test_evaluate_builds_every_mode_from_ingest_and_answer():
  batch = {"x": jnp.array([1, 2, 3, 4]), "y": jnp.array([1, 2, 3, 4])}
  r = yardstick.evaluate(_system(), None, [batch, batch], chance=0.25)
  assert r["accuracy"] == 1.0
  assert r["accuracy_memory_zeroed"] == 0.0          # zeros never match 1..4
  assert r["accuracy_memory_shuffled"] == 0.0        # rolled: every row holds another's digit
  assert r["accuracy_no_memory"] == 0.0
  assert r["accuracy_oracle"] is None                # no oracle defined
  # loss with memory 0.5, zeroed mean((0-y)^2)+0.5 = 7.5+0.5 = 8.0
  assert r["delta_zero"] == pytest.approx(8.0 / 0.5)
  assert set(yardstick.KEYS) <= set(r)
  assert yardstick.memory_used(r)
  assert not yardstick.memory_used(dict(r, accuracy_memory_shuffled=0.5))
  assert not yardstick.memory_used(dict(r, accuracy=0.5))
  assert "memory used" in yardstick.format_table(r)
  r = yardstick.evaluate(_system(oracle=True), None, [batch], chance=0.25)
  assert r["accuracy_oracle"] == 1.0


def test_evaluate_without_memory_scores_answer_alone():
  s = System(init=None, loss=None,
             answer=lambda p, b, m: {"correct": 3.0, "count": 4.0, "loss": 1.0})
  r = yardstick.evaluate(s, None, [{}], chance=0.5)
  assert r["accuracy"] == 0.75 and r["accuracy_memory_zeroed"] is None and r["delta_zero"] is None
