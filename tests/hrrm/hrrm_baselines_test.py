"""The Planner's n-gram baselines: the tables and the metric, on hand-built streams."""
import numpy as np

from memjax.hrrm import baselines


def _batch(rows, ctrl):
  rows = np.array(rows)
  return {"inputs": rows, "ctrl": np.array(ctrl), "weight": np.ones(rows.shape, np.float32)}


def test_ngram_tables_on_a_hand_built_case():
  # ctrl 1 follows the pair (1, 2) only; token 2 alone is followed by it 2 times out of 3
  train = [_batch([[1, 2, 0, 0], [1, 2, 3, 3], [3, 2, 0, 0]],
                  [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])]
  ev = [_batch([[3, 2, 0, 0], [1, 2, 0, 0], [0, 2, 0, 0]],
               [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])]
  uni = baselines.NgramCtrl(1, 4).fit(train)
  np.testing.assert_array_equal(uni.predict(ev[0]["inputs"])[:, 1], [1, 1, 1])
  # scored: the three positions it calls a control token; right on one
  assert baselines.ngram_ctrl_accuracy(train, ev, 1, 4) == 1 / 3
  bi = baselines.NgramCtrl(2, 4).fit(train)
  # (0, 2) was never seen: it backs off to the unigram table's answer for 2
  np.testing.assert_array_equal(bi.predict(ev[0]["inputs"])[:, 1], [0, 1, 1])
  assert baselines.ngram_ctrl_accuracy(train, ev, 2, 4) == 1 / 2


def test_metric_ignores_true_negatives_and_invalid_positions():
  ctrl = np.array([[0, 0, 3, 0]])
  valid = np.array([[True, True, True, False]])
  assert baselines.ctrl_accuracy(np.zeros_like(ctrl), ctrl, valid) == 0.0  # "none" never wins
  assert baselines.ctrl_accuracy(np.array([[0, 0, 3, 5]]), ctrl, valid) == 1.0
  assert baselines.ctrl_accuracy(np.array([[2, 0, 3, 0]]), ctrl, valid) == 0.5
