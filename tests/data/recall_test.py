"""Synthetic tasks: deterministic, answers out of local reach, tfds round trip, resumable."""
import numpy as np
import pytest

from memjax.data import heldout
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
  assert list(tmp_path.glob("memjax_assoc_recall/*/1.1.0/*.array_record*"))


def _bindings(task, e):
  """The key -> value bindings an example holds (every pair of its first segment)."""
  if isinstance(task, recall.AssocRecall):
    first = e["inputs"][1:task.segment_len + 1]
    return {(int(first[j]) - task.key0, int(first[j + 1]) - task.value0)
            for j in range(0, 2 * task.c.num_pairs, 2)}
  text = "".join(task.CHARS[i] for i in e["inputs"][:task.segment_len + 1])
  turns = text[1:].split(";")[:task.c.num_turns]
  return {(int(t[3:5]), int(t[6])) for t in turns}


@pytest.mark.parametrize("klass", [recall.AssocRecall, recall.KVRecall])
def test_eval_bindings_never_occur_in_training(klass):
  task = klass(klass.defaults())
  values = task.c.num_values if klass is recall.AssocRecall else 10
  train = set().union(*(_bindings(task, task.example_at("train", s, i))
                        for s in (0, 1) for i in range(300)))
  held = set().union(*(_bindings(task, task.example_at(split, 0, i))
                       for split in ("eval", "test") for i in range(300)))
  assert not train & held
  # by construction, not by luck: each side lies in its part of the partition
  assert all(heldout.binding_is_eval(k, v, values) for k, v in held)
  assert not any(heldout.binding_is_eval(k, v, values) for k, v in train)
  # the scored answers are eval bindings too (they repeat first-segment pairs)
  e = task.example_at("eval", 0, 0)
  assert _bindings(task, e) <= held
  # and the splits cover the same keys: only the values bound to them differ
  assert {k for k, _ in train} == {k for k, _ in held}


def test_eval_passkeys_never_occur_in_training():
  task = recall.Passkey(recall.Passkey.defaults())
  key = lambda e: tuple(e["targets"][e["answer"] > 0])
  train = {key(task.example_at("train", s, i)) for s in (0, 1) for i in range(2000)}
  held = {key(task.example_at("eval", 0, i)) for i in range(2000)}
  assert len(train) > 1900 and len(held) > 1900 and not train & held
  assert all(heldout.in_eval(*(np.array(k) - task.digit0)) for k in held)


def test_binding_split_gives_every_key_a_quarter_of_its_values():
  for v in (2, 8, 10, 16, 64):
    for key in (0, 5, (3, 4)):
      held = [x for x in range(v) if heldout.binding_is_eval(key, x, v)]
      assert len(held) == heldout.n_eval(v) == min(max(1, v // 4), v - 1)
      rng = np.random.default_rng(0)
      assert {heldout.draw_value(rng, key, v, True) for _ in range(200)} == set(held)
      assert {heldout.draw_value(rng, key, v, False) for _ in range(400)} == \
          set(range(v)) - set(held)


def test_held_out_value_sets_are_independent_across_keys():
  # Arcs (value + offset(key)) gave keys of equal offset the same held-out values, so a model
  # that matched a missing key to a look-alike key answered from a shuffled memory above chance.
  v, n = 64, heldout.n_eval(64)
  held = [frozenset(x for x in range(v) if heldout.binding_is_eval(k, x, v)) for k in range(256)]
  overlaps = [len(a & b) for i, a in enumerate(held) for b in held[i + 1:]]
  assert max(overlaps) < n   # 256 keys on 64 arcs would repeat a set; random 16-sets do not
  assert abs(np.mean(overlaps) - n * n / v) < 0.2   # independent sets share n^2 / V on average



def test_shuffled_baseline_counts_what_the_partner_memory_holds():
  task = recall.AssocRecall(recall.AssocRecall.defaults())
  k, v = task.key0, task.value0

  def row(pairs, asked):   # [filler | k v k v ... | queries k v ...], the answer on each v
    inputs = np.full(12, task.filler0)
    inputs[1:1 + 2 * len(pairs)] = np.ravel(pairs)
    inputs[-2 * len(asked):] = np.ravel(asked)
    targets = np.roll(inputs, -1)
    answer = np.zeros(12, int)
    answer[len(inputs) - 2 * len(asked) + 2 * np.arange(len(asked))] = 1
    return inputs, targets, answer

  rows = [row([(k + 1, v + 5), (k + 2, v + 6)], [(k + 9, v + 1), (k + 8, v + 2)]),
          row([(k + 9, v + 1), (k + 8, v + 3)], [(k + 1, v + 5), (k + 3, v + 4)])]
  batch = {n: np.stack([r[i] for r in rows]) for i, n in enumerate(("inputs", "targets", "answer"))}
  # Row 0 reads row 1's memory: key 9 bound to the right value (1), key 8 to another (0).
  # Row 1 reads row 0's: key 1 bound right (1), key 3 absent (chance).
  assert task.shuffled_baseline(batch) == pytest.approx((1 + 0 + 1 + task.chance) / 4)


@pytest.mark.parametrize("klass,extreme", [
    (recall.AssocRecall, dict(num_pairs=16, num_queries=16)),    # queries fill the segment
    (recall.Passkey, dict(digits=30)),                            # digits + 2 = segment_len
    (recall.KVRecall, dict(num_turns=8, num_queries=8)),
])
@pytest.mark.parametrize("chunk", ["whole", "segment", "all segments"])
def test_answer_tail_holds_every_scored_target(klass, extreme, chunk):
  """Every scored target of a training batch lies in its last `answer_tail` positions (THEN's
  loss applies its head there only), for whole examples and for stream chunks, also when the
  questions fill the last segment; the tail holds some scored target of each example."""
  c = klass.defaults()
  c.update(extreme)
  c.stream_segments = {"whole": 0, "segment": 1, "all segments": c.num_segments}[chunk]
  klass.validate(c)
  task = klass(c)
  it = iter(task.batches("train", 4, 0))
  seen = 0
  for _ in range(2 * (c.num_segments // c.stream_segments if c.stream_segments else 1)):
    answer = next(it)["answer"]
    assert not answer[:, :-task.answer_tail].any()
    seen += int(answer[:, -task.answer_tail:].any(1).sum())
  assert seen >= 8   # two passes over each example's chunks: 4 rows x 2 answered chunks


def test_answer_tail_test_covers_every_recall_task():
  """A SyntheticTask inherits answer_tail: each registered one is either checked above or one
  segment long (its tail is the whole sequence, so the claim cannot leave an answer out)."""
  tested = {recall.AssocRecall, recall.Passkey, recall.KVRecall}
  for name in tasks.TASKS:
    klass = tasks.task_class(name)
    if not issubclass(klass, recall.SyntheticTask) or klass in tested:
      continue
    task = klass(klass.defaults())
    assert task.num_segments == 1 and task.answer_tail == task.length, name
