"""HRSA retrieval task: the answer is out of the decoder's reach; adversarial keys; curriculum."""
import itertools

import numpy as np
import pytest

from memjax.core.config import ConfigError
from memjax.data import heldout
from memjax.hrsa import tasks as ht

TINY = dict(doc_len=128, chunk=16, tail=16, curriculum_steps=(2, 4), target_distractors=3,
            hard_distractors=4, retrieval_fraction=0.5)


def test_answer_fact_is_in_doc_but_never_in_decoder_view():
  task = ht.HRSARetrievalTask(TINY)
  for b in itertools.islice(iter(task.batches("eval", 16, 0)), 3):
    assert b["is_retrieval"].all()
    for i in range(16):
      s = int(b["src_start"][i])
      doc, tok = b["doc"][i], b["tokens"][i]
      assert doc[s] == ht.FACT and doc[s + 3] == b["answer"][i]
      assert s + 4 <= task.doc_len - task.tail               # the fact lies before the tail
      np.testing.assert_array_equal(tok[:task.tail], doc[-task.tail:])
      assert tok[-4] == ht.QUERY and tok[-1] == ht.ANS
      assert (tok[-3], tok[-2]) == (doc[s + 1], doc[s + 2])
      assert b["targets"][i, -1] == b["answer"][i] and b["weights"][i].sum() == 1


def test_adversarial_split_has_near_identical_keys():
  task = ht.HRSARetrievalTask(TINY)
  b = next(iter(task.batches("adversarial", 8, 0)))
  assert b["adversarial"].all()
  for i in range(8):
    doc, s = b["doc"][i], int(b["src_start"][i])
    facts = [j for j in range(len(doc) - 3) if doc[j] == ht.FACT and j != s]
    assert any(doc[j + 1] == doc[s + 1] and doc[j + 2] != doc[s + 2] for j in facts)


def test_train_mixes_lm_and_retrieval_and_follows_curriculum():
  task = ht.HRSARetrievalTask(TINY)
  assert [task.stage_at(s) for s in (0, 1, 2, 3, 4, 9)] == ["easy"] * 2 + ["target"] * 2 + ["hard"] * 2
  b = next(iter(task.batches("train", 64, 0)))
  frac = b["is_retrieval"].mean()
  assert 0.25 < frac < 0.75
  lm = ~b["is_retrieval"]
  assert (b["weights"][lm] == 1).all() and (b["src_start"][lm] == -1).all()


def test_batches_are_deterministic_and_resumable():
  task = ht.HRSARetrievalTask(TINY)
  it = iter(task.batches("train", 4, 3))
  next(it)
  state = it.get_state()
  want = next(it)
  it2 = iter(task.batches("train", 4, 3))
  it2.set_state(state)
  got = next(it2)
  for k in want:
    np.testing.assert_array_equal(want[k], got[k])


@pytest.mark.parametrize("bad, field", [(dict(doc_len=100), "task.doc_len"),
                                        (dict(chunk=3), "task.chunk"),
                                        (dict(retrieval_fraction=1.5), "task.retrieval_fraction")])
def test_bad_task_config_names_field(bad, field):
  with pytest.raises(ConfigError, match=field):
    ht.HRSARetrievalTask.validate({**TINY, **bad})


def _facts(task, b):
  """Every (ka, kb, value) fact written into the batch's documents."""
  out = set()
  for doc in b["doc"]:
    for j in np.nonzero(doc[:-3] == ht.FACT)[0]:
      out.add((int(doc[j + 1]) - task.ka0, int(doc[j + 2]) - task.kb0, int(doc[j + 3]) - task.v0))
  return out


@pytest.mark.parametrize("config", [TINY, {}])   # the tests' sizes and the task's defaults
def test_no_eval_fact_occurs_in_training(config):
  task = ht.HRSARetrievalTask(config)
  # every curriculum stage of training (TINY reaches "hard" at batch 4), LM examples included
  train = set().union(*(_facts(task, b) for b in itertools.islice(
      iter(task.batches("train", 32, 0)), 40)))
  held = set().union(*(_facts(task, b) for split in ("eval", "adversarial")
                       for b in itertools.islice(iter(task.batches(split, 32, 0)), 20)))
  assert len(train) > 500 and len(held) > 200 and not train & held
  # by construction: each fact lies in its split's part of the binding partition
  assert all(heldout.binding_is_eval((a, k), v, task.n_values) for a, k, v in held)
  assert not any(heldout.binding_is_eval((a, k), v, task.n_values) for a, k, v in train)
  # asked-for answers included, and every key pair is asked in both splits
  b = next(iter(task.batches("eval", 32, 0)))
  asked = {(int(t[-3]) - task.ka0, int(t[-2]) - task.kb0, int(a) - task.v0)
           for t, a in zip(b["tokens"], b["answer"])}
  assert asked <= held
  assert {(a, k) for a, k, _ in train} == {(a, k) for a, k, _ in held}
