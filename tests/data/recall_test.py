"""Synthetic tasks: deterministic, answers out of local reach, tfds round trip, resumable."""
import numpy as np
import pytest

from memjax.data import recall
from memjax.core import tasks


@pytest.mark.parametrize("klass", [recall.AssocRecall, recall.Passkey, recall.KVRecall])
def test_deterministic_and_answers_in_last_segment(klass):
  c = klass.defaults()
  klass.validate(c)
  task = klass(c)
  a, b = task.example_at("train", 3, 7), task.example_at("train", 3, 7)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["inputs"], task.example_at("eval", 3, 7)["inputs"])
  s = task.segment_len
  scored = np.nonzero(a["answer"])[0]
  assert scored.size and scored.min() >= a["answer"].size - s     # questions: last segment only
  np.testing.assert_array_equal(a["inputs"][1:], a["targets"][:-1])
  assert a["inputs"].max() < task.vocab_size


def test_assoc_recall_answer_is_absent_from_the_question_segment_and_the_one_before():
  task = recall.AssocRecall(recall.AssocRecall.defaults())
  for i in range(20):
    e = task.example_at("train", 0, i)
    s = task.segment_len
    for pos in np.nonzero(e["answer"])[0]:
      key = e["inputs"][pos]
      value = e["targets"][pos]
      local = e["inputs"][-s:]
      # the key occurs once in the question segment: the local context cannot pair it
      assert (local == key).sum() == 1
      # the pair sits in segment 0, two segments back
      first = e["inputs"][:s]
      j = np.nonzero(first == key)[0]
      assert j.size == 1 and e["inputs"][j[0] + 1] == value


def test_passkey_and_kv_recall_hide_the_information_early():
  p = recall.Passkey(recall.Passkey.defaults())
  e = p.example_at("train", 0, 0)
  digits = e["targets"][e["answer"] > 0]
  stream = e["inputs"][: p.segment_len]
  assert any(np.array_equal(stream[i:i + digits.size], digits) for i in range(p.segment_len))
  kv = recall.KVRecall(recall.KVRecall.defaults())
  e = kv.example_at("train", 0, 0)
  text = "".join(kv.CHARS[i] for i in e["inputs"])
  assert text[kv.segment_len + 1: -kv.segment_len].strip(".") == ""    # filler in between


def test_iterator_resumes_from_saved_state():
  task = recall.AssocRecall(recall.AssocRecall.defaults())
  it = iter(task.batches("train", 4, 0))
  next(it), next(it)
  state = it.get_state()
  want = next(it)
  it2 = iter(task.batches("train", 4, 0))
  it2.set_state(state)
  got = next(it2)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])


def test_tfds_array_record_round_trip(tmp_path):
  c = recall.AssocRecall.defaults()
  c.update(source="tfds", data_dir=str(tmp_path), tfds_train_examples=24, tfds_eval_examples=8)
  tasks.validate(__import__("ml_collections").ConfigDict({"task": c}))
  from_files = tasks.make_task(c)
  c2 = recall.AssocRecall.defaults()
  generated = tasks.make_task(c2)
  got = next(iter(from_files.batches("train", 8, 0)))
  want = next(iter(generated.batches("train", 8, 0)))
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  assert list(tmp_path.glob("memjax_assoc_recall/*/1.0.0/*.array_record*"))
