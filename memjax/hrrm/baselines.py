"""Baselines beside `chance` where a task has structure: how far a lookup table gets.

The Planner's control-token detection is scored against an n-gram table: the control class
of the next token predicted from the last n input tokens alone, fit on the training data
(the most frequent class per context), scored on the eval batches with the Planner's own
metric (memjax.hrrm.system._ctrl_counts). A context never seen in training backs off to the
last n-1 tokens, down to class 0 ("no control token").
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

NUM_CLASSES = 6   # 0: not a control token; 1..5: CONTROL_TOKENS


def _contexts(inputs_BxT: np.ndarray, n: int, vocab: int) -> np.ndarray:
  """Per position, the last n tokens (up to and including it) as one int; `vocab` pads."""
  b, t = inputs_BxT.shape
  padded = np.concatenate([np.full((b, n - 1), vocab, np.int64), inputs_BxT.astype(np.int64)], 1)
  ctx = np.zeros((b, t), np.int64)
  for i in range(n):
    ctx = ctx * (vocab + 1) + padded[:, i:i + t]
  return ctx


def _stack(batches: Iterable[dict]):
  bs = list(batches)
  return (np.concatenate([np.asarray(b["inputs"]) for b in bs]),
          np.concatenate([np.asarray(b["ctrl"]) for b in bs]),
          np.concatenate([np.asarray(b["weight"]) for b in bs]) > 0)


class NgramCtrl:
  """Control class of the next token from the last `n` tokens (backing off to fewer)."""

  def __init__(self, n: int, vocab: int):
    self.n, self.vocab = n, vocab
    self.tables: dict[int, dict[int, int]] = {}

  def fit(self, batches: Iterable[dict]) -> "NgramCtrl":
    inputs, ctrl, valid = _stack(batches)
    for k in range(1, self.n + 1):
      ctx = _contexts(inputs, k, self.vocab)[valid]
      keys, inv = np.unique(ctx, return_inverse=True)
      counts = np.zeros((keys.size, NUM_CLASSES), np.int64)
      np.add.at(counts, (inv, ctrl[valid]), 1)
      self.tables[k] = dict(zip(keys.tolist(), counts.argmax(-1).tolist()))
    return self

  def predict(self, inputs_BxT: np.ndarray) -> np.ndarray:
    pred = np.zeros(inputs_BxT.shape, np.int64)
    done = np.zeros(inputs_BxT.shape, bool)
    for k in range(self.n, 0, -1):
      ctx = _contexts(inputs_BxT, k, self.vocab)
      table = self.tables[k]
      hit = np.vectorize(lambda c: c in table, otypes=[bool])(ctx) & ~done
      pred[hit] = np.vectorize(table.__getitem__, otypes=[np.int64])(ctx[hit])
      done |= hit
    return pred


def ctrl_accuracy(pred: np.ndarray, ctrl: np.ndarray, valid: np.ndarray) -> float:
  """The Planner's metric: over valid positions where the next token is a control token or
  the prediction says so, the share with the right class."""
  scored = valid & ((ctrl > 0) | (pred > 0))
  return float(((pred == ctrl) & scored).sum() / max(scored.sum(), 1))


def ngram_ctrl_accuracy(train_batches: Iterable[dict], eval_batches: Iterable[dict], n: int,
                        vocab: int) -> float:
  table = NgramCtrl(n, vocab).fit(train_batches)
  inputs, ctrl, valid = _stack(eval_batches)
  return ctrl_accuracy(table.predict(inputs), ctrl, valid)
