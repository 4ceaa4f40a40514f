"""Small primitives every design and the yardstick share: cross-entropy, masked means,
exact match."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from memjax.core import scan as scan_lib


def token_nll(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """Per-position negative log-likelihood of the targets, float32."""
  logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), -1)
  return -jnp.take_along_axis(logp, targets_BxT[..., None], -1)[..., 0]


def masked_mean(x: jax.Array, weights: jax.Array) -> jax.Array:
  """sum(x * w) / max(sum(w), 1): a mean over the scored entries, 0 when none are."""
  w = weights.astype(jnp.float32)
  return (x * w).sum() / jnp.maximum(w.sum(), 1.0)


def answer_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array, answer_BxT: jax.Array) -> jax.Array:
  """Mean cross-entropy over the scored positions (answer_BxT > 0)."""
  return masked_mean(token_nll(logits_BxTxV, targets_BxT), answer_BxT > 0)


def predicts(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """argmax(logits, -1) == targets (the first maximum, like argmax), without the argmax: the
  target's logit is the maximum and no earlier index reaches it. Two plain reductions, where
  the argmax is a variadic (value, index) reduction: on the 2-core CPU the THEN step's argmax
  over [32, 96, 353] logits cost more than its largest matmul (BUILD_NOTES, issue 16).
  Logits holding NaN count as wrong (argmax would pick the first NaN)."""
  v = logits_BxTxV.shape[-1]
  top = logits_BxTxV.max(-1, keepdims=True)
  t = targets_BxT[..., None]
  at_t = jnp.take_along_axis(logits_BxTxV, t, -1)
  earlier = ((logits_BxTxV == top) & (jnp.arange(v) < t)).any(-1)
  return (at_t[..., 0] == top[..., 0]) & ~earlier


def answer_accuracy(logits_BxTxV: jax.Array, targets_BxT: jax.Array, answer_BxT: jax.Array,
                    max_answers: int) -> tuple[jax.Array, jax.Array]:
  """(answers fully right, answers present): answer_BxT holds answer ids 1..max_answers at the
  positions they span (0 elsewhere); an answer counts when all its tokens are right."""
  return answers_right(predicts(logits_BxTxV, targets_BxT), answer_BxT, max_answers)


def answers_right(hit_BxT: jax.Array, answer_BxT: jax.Array,
                  max_answers: int) -> tuple[jax.Array, jax.Array]:
  """answer_accuracy from the per-position hits (predicted token == target)."""
  wrong = ~hit_BxT & (answer_BxT > 0)
  ids = jax.nn.one_hot(answer_BxT - 1, max_answers, dtype=jnp.int32)          # BxTxA, 0 if none
  present = ids.sum(1) > 0                                                    # BxA
  any_wrong = (ids * wrong[..., None]).sum(1) > 0
  return (present & ~any_wrong).sum().astype(jnp.float32), present.sum().astype(jnp.float32)


def scored_segments(head, h_BxTxD: jax.Array, targets_BxT: jax.Array, answer_BxT: jax.Array,
                    segment_len: int, max_answers: int, *, unroll: bool | None = None):
  """(answer_loss, correct, count) of `head(h)`'s logits, the head applied only to segments
  that hold a scored position (lax.cond per segment, over the whole batch): the same numbers
  as answer_loss / answer_accuracy of head(h) over all of T, which give the other segments
  zero weight. Recall tasks score one segment in N: the head, its softmax and their backward
  (30% of THEN's forward matmuls: vocabulary 353, dim 64) then run on 1/N of the tokens."""
  b, t = targets_BxT.shape
  n = t // segment_len
  split = lambda x: jnp.swapaxes(x.reshape(b, n, segment_len, *x.shape[2:]), 0, 1)
  scored_BxT = answer_BxT > 0

  def body(_, xs):
    h, tgt, w = xs

    def on():
      logits = head(h)
      return token_nll(logits, tgt) * w, predicts(logits, tgt)

    def off():
      return jnp.zeros(tgt.shape, jnp.float32), jnp.zeros(tgt.shape, bool)

    return None, jax.lax.cond(jnp.any(w), on, off)

  if unroll is None:
    unroll = n <= scan_lib.UNROLL_UP_TO
  _, (nll, hit) = scan_lib.scan(body, None, (split(h_BxTxD), split(targets_BxT),
                                             split(scored_BxT)), unroll=unroll)
  merge = lambda x: jnp.swapaxes(x, 0, 1).reshape(b, t)
  loss = merge(nll).sum() / jnp.maximum(scored_BxT.sum().astype(jnp.float32), 1.0)
  return (loss,) + answers_right(merge(hit), answer_BxT, max_answers)


def scored_tail(head, h_BxTxD: jax.Array, targets_BxT: jax.Array, answer_BxT: jax.Array,
                tail: int, max_answers: int):
  """(answer_loss, correct, count) of `head(h)`'s logits for a task whose scored positions all
  lie in the last `tail` positions (a recall task's question segment): the head runs on those
  positions only, with no cond. Equal to scored_segments for such batches; a scored position
  before the tail would be left out, so only a task that says so (`answer_tail`) takes it."""
  logits = head(h_BxTxD[:, -tail:])
  targets, answer = targets_BxT[:, -tail:], answer_BxT[:, -tail:]
  return ((answer_loss(logits, targets, answer),)
          + answer_accuracy(logits, targets, answer, max_answers))


def exact_match(logits_BxV: jax.Array, answer_B: jax.Array, mask_B: jax.Array):
  """(correct, count) of one-token answers over the masked examples."""
  ok = (jnp.argmax(logits_BxV, -1) == answer_B) & mask_B
  return ok.sum().astype(jnp.float32), mask_B.sum().astype(jnp.float32)
