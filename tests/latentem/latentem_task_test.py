"""The KV task: disjoint train/eval bindings, the asked statement in the removed part,
determinism, the tokenizer check."""
import numpy as np
import pytest

from memjax.core.config import ConfigError
from memjax.latentem import task as task_lib
from memjax.pretrained import tiny_tokenizer


def _pairs(t, split, n=60):
  seen = set()
  for i in range(n):
    e = t.example_at(split, 0, i)
    seen |= set(zip(e["slot_keys"].tolist(), e["slot_digits"].tolist()))
    seen.add((int(e["asked_key"]), int(e["answer"])))
  return seen


def _task(variant="templated", **kw):
  c = task_lib.LatentemKV.defaults()
  prose = variant == "prose"
  c.update(reader="tiny:gemma3", variant=variant, budget=96 if prose else 48,
           removed_tokens=320 if prose else 100)
  c.update(**kw)
  return task_lib.LatentemKV(c)


@pytest.mark.parametrize("variant", task_lib.VARIANTS)
def test_train_and_eval_bindings_are_disjoint(variant):
  t = _task(variant)
  pairs = {split: _pairs(t, split) for split in ("train", "eval")}
  assert pairs["train"] and pairs["eval"]
  assert not pairs["train"] & pairs["eval"]
  assert all(not task_lib.is_eval_pair(k, d) for k, d in pairs["train"])
  assert all(task_lib.is_eval_pair(k, d) for k, d in pairs["eval"])


@pytest.mark.parametrize("variant", task_lib.VARIANTS)
def test_keys_holdout_keeps_eval_keys_out_of_training(variant):
  t = _task(variant, holdout="keys")
  keys = {s: {k for k, _ in _pairs(t, s)} for s in ("train", "eval", "test")}
  assert keys["train"] and keys["eval"] and not keys["train"] & (keys["eval"] | keys["test"])
  assert all(task_lib.is_eval_key(k) for k in keys["eval"] | keys["test"])
  assert not any(task_lib.is_eval_key(k) for k in keys["train"])
  # Digits are free in both splits: every digit answers some train and some eval question.
  for s in ("train", "eval"):
    assert {d for _, d in _pairs(t, s)} == set(range(10))


def test_eval_keys_are_unseen_names_of_seen_words():
  ev = [k for k in range(100) if task_lib.is_eval_key(k)]
  assert len(ev) == 30
  np.testing.assert_array_equal(np.bincount([k // 10 for k in ev]), np.full(10, 3))
  np.testing.assert_array_equal(np.bincount([k % 10 for k in ev]), np.full(10, 3))


def test_keys_holdout_with_too_few_keys_is_a_config_error():
  with pytest.raises(ConfigError, match="task.num_keys"):
    _task(holdout="keys", num_keys=20)
  with pytest.raises(ConfigError, match="task.holdout"):
    _task(holdout="names")


@pytest.mark.parametrize("variant", task_lib.VARIANTS)
def test_asked_statement_is_removed_and_layout_fixed(variant):
  t = _task(variant)
  tok = t.tokenizer
  for i in range(20):
    e = t.example_at("eval", 3, i)
    assert e["removed"].shape == (t.removed_tokens,) and e["kept"].shape == (t.budget,)
    np.testing.assert_array_equal(e["full"], np.concatenate([e["removed"], e["kept"]]))
    assert e["whole_removed"] >= 8
    name = t.key_name(int(e["asked_key"]))
    removed, kept = tok.decode(e["removed"]), tok.decode(e["kept"])
    assert name in removed
    assert kept.count(name) == 1 and kept.rstrip().endswith(("=", "Answer:"))  # the question
    assert e["slot_keys"][e["asked_slot"]] == e["asked_key"]
    assert e["slot_digits"][e["asked_slot"]] == e["answer"]
    assert tok.decode(e["summary"]).count(name) == 2  # the statement, then the question


@pytest.mark.parametrize("variant", task_lib.VARIANTS)
def test_segments_and_digit_positions_mark_the_first_statements(variant):
  t = _task(variant)
  for i in range(10):
    e = t.example_at("train", 1, i)
    seg, removed = e["segments"], e["removed"]
    for j in range(t.slots):
      # The digit of statement j is the token at digit_pos[j], inside segment j.
      assert removed[e["digit_pos"][j]] == t.digit_ids[e["slot_digits"][j]]
      assert seg[e["digit_pos"][j]] == j
      idx = np.flatnonzero(seg == j)
      assert len(idx) and (np.diff(idx) == 1).all()           # one contiguous stretch
      key = t.key_name(int(e["slot_keys"][j]))
      assert key in t.tokenizer.decode(removed[idx])          # holding its own key
    assert seg[0] == -1                                       # BOS belongs to none


def test_examples_are_deterministic():
  a, b = _task(), _task()
  for i in range(3):
    x, y = a.example_at("train", 7, i), b.example_at("train", 7, i)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a.example_at("train", 7, 0)["full"], a.example_at("eval", 7, 0)["full"])


def test_overfit_one_repeats_one_episode():
  t = _task(overfit_one=True)
  np.testing.assert_array_equal(t.example_at("train", 0, 0)["full"], t.example_at("train", 0, 5)["full"])


class _MergingTokenizer:
  """A tokenizer that fuses ' 8' into one token: not the split the task assumes."""

  def __init__(self):
    self.inner = tiny_tokenizer()

  def encode(self, text):
    ids = self.inner.encode(text)
    out, i = [], 0
    sp, eight = self.inner.encode(" ")[0], self.inner.encode("8")[0]
    while i < len(ids):
      if ids[i] == sp and i + 1 < len(ids) and ids[i + 1] == eight:
        out.append(383)
        i += 2
      else:
        out.append(ids[i])
        i += 1
    return out


def test_tokenizer_splitting_digits_differently_is_a_config_error():
  assert len(task_lib.check_tokenizer(tiny_tokenizer(), "prose")) == 10
  with pytest.raises(ConfigError, match="splits digits differently"):
    task_lib.check_tokenizer(_MergingTokenizer(), "templated")


def test_removed_part_too_small_is_a_config_error():
  with pytest.raises(ConfigError, match="task.removed_tokens"):
    _task(removed_tokens=40)


def test_eval_digits_are_balanced():
  assert all(len(task_lib.allowed_digits("eval", k)) == 2 for k in range(100))
  assert all(len(task_lib.allowed_digits("train", k)) == 8 for k in range(100))
  counts = np.bincount([d for k in range(100) for d in task_lib.allowed_digits("eval", k)])
  np.testing.assert_array_equal(counts, np.full(10, 20))


@pytest.mark.parametrize("variant", task_lib.VARIANTS)
def test_kept_statements_say_nothing_of_the_asked_digit(variant, monkeypatch):
  # A long kept part (many kept statements) so that a leak through other keys would show:
  # under a rule shared by keys ending in the same digit, (3k + d) % 5 == 0, copying the
  # digit of the kept key with the asked key's last digit scores 0.42 (templated) / 0.27
  # (prose) here, 0.29 / 0.20 on the real task.
  long = 192 if variant == "templated" else 320
  for t in (_task(variant, budget=long), _task(variant, budget=long, holdout="keys")):
    for name, acc in t.copy_baselines("eval", n=500).items():
      assert abs(acc - t.chance) < 0.04, (name, acc)    # 3 standard errors at n=500
  t = _task(variant, budget=long)
  monkeypatch.setattr(task_lib, "is_eval_pair", lambda k, d: (3 * k + d) % 5 == 0)
  leaky = t.copy_baselines("eval", n=500)
  assert leaky["copy_baseline_same_last"] > t.chance + 0.05, leaky
