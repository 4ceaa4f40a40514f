"""THEN as a System: TBPTT over the task's segments; the last segment asks, memory answers."""
from __future__ import annotations

import jax.numpy as jnp

from memjax.core import losses
from memjax.core import memory as memory_lib
from memjax.core.system import System
from memjax.then.model import ThenModel, validate  # noqa: F401  (the registry calls validate)


def make_system(config, task) -> System:
  then = ThenModel(config, task.vocab_size, config.model.segment_len or task.segment_len)
  max_answers = task.max_answers
  s = task.segment_len   # the task's last segment holds the questions
  tail = getattr(task, "answer_tail", None)

  def loss(params, batch, memory, aux, rng):
    del rng
    start = batch.get("reset", jnp.ones(batch["inputs"].shape[0], bool))
    state = memory_lib.reset(memory, start)
    h, state = then.run(params, state, batch["inputs"],
                        truncate_every=config.model.truncate_every, head=False)
    # The head, its softmax and their gradient only where a position can be scored: the same
    # loss, accuracy and gradients as over every position. A task that says where
    # (answer_tail) needs no cond per segment: each cond made both CPU threads wait and wrote
    # zeros for every residual of the segments it skipped (BUILD_NOTES issue 16).
    head = lambda h: then.logits(params, h)
    if tail:
      l, correct, count = losses.scored_tail(head, h, batch["targets"], batch["answer"], tail,
                                             max_answers)
    else:
      l, correct, count = losses.scored_segments(head, h, batch["targets"], batch["answer"],
                                                 then.segment_len, max_answers)
    return l, ({"accuracy": correct / jnp.maximum(count, 1.0)}, state, aux)

  def ingest(params, batch):
    """Every segment but the last (the questions) written into a fresh memory."""
    b = batch["inputs"].shape[0]
    return then.ingest(params, then.init_state(b), batch["inputs"][:, :-s])

  def answer(params, batch, memory):
    if memory is None:
      memory = then.init_state(batch["inputs"].shape[0])
    logits, _ = then.run(params, memory, batch["inputs"][:, -s:])
    targets, ans = batch["targets"][:, -s:], batch["answer"][:, -s:]
    correct, count = losses.answer_accuracy(logits, targets, ans, max_answers)
    return {"correct": correct, "count": count, "loss": losses.answer_loss(logits, targets, ans)}

  return System(init=then.init_params, loss=loss, ingest=ingest, answer=answer,
                init_memory=then.init_state, graphdef=then.graphdef)
