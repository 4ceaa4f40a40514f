"""The bypass regime's task claims (issue 14), on generated batches: the asked-for fact lies
inside the decoder's local context in the configured fraction of examples, adversarial
look-alikes sit inside it, LM examples score every position of the text after the document,
the text has copy structure, and no eval fact occurs in training."""
import itertools

import numpy as np
import pytest

from memjax.core.config import ConfigError
from memjax.data import heldout
from memjax.hrsa import tasks as ht

BYPASS = dict(doc_len=256, chunk=8, tail=64, retrieval_fraction=0.2, inside_fraction=0.25,
              adversarial_in_tail=True, lm_after_doc=True, copy_p=0.05, copy_len=8, copy_max=48,
              curriculum_steps=(2, 4), target_distractors=6, hard_distractors=10)


def _take(task, split, n, bs=64):
  batches = list(itertools.islice(iter(task.batches(split, bs, 0)), -(-n // bs)))
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _in_view(task, s):
  """Whether a fact starting at s lies wholly in the decoder's local context (the tail)."""
  return s >= task.doc_len - task.tail


def test_fraction_of_asked_facts_inside_local_context():
  task = ht.HRSARetrievalTask(BYPASS)
  b = _take(task, "eval", 1024)
  inside = np.array([_in_view(task, int(s)) for s in b["src_start"]])
  np.testing.assert_array_equal(inside, b["inside"])
  sd = np.sqrt(0.25 * 0.75 / len(inside))
  assert abs(inside.mean() - 0.25) < 4 * sd, inside.mean()
  for i in np.nonzero(inside)[0][:50]:   # an inside fact is in the decoder's tokens, whole
    s, t = int(b["src_start"][i]), b["tokens"][i]
    off = s - (task.doc_len - task.tail)
    np.testing.assert_array_equal(t[off:off + 4], b["doc"][i, s:s + 4])
    assert t[off + 3] == b["answer"][i]
  for split, want in (("eval_inside", True), ("eval_beyond", False)):
    b = _take(task, split, 128)
    assert all(_in_view(task, int(s)) == want for s in b["src_start"]), split
    assert (b["inside"] == want).all()
  # train retrieval examples follow the same fraction (the target and hard stages)
  tr = list(itertools.islice(iter(task.batches("train", 64, 0)), 12))[2:]
  s = np.concatenate([b["src_start"][b["is_retrieval"]] for b in tr])
  frac = np.mean([_in_view(task, int(x)) for x in s])
  assert abs(frac - 0.25) < 4 * np.sqrt(0.25 * 0.75 / len(s)), frac


def test_default_task_never_puts_the_asked_fact_in_view():
  task = ht.HRSARetrievalTask({**BYPASS, "inside_fraction": 0.0})
  b = _take(task, "eval", 256)
  assert not any(_in_view(task, int(s)) for s in b["src_start"]) and not b["inside"].any()


def test_adversarial_lookalikes_sit_inside_local_context():
  task = ht.HRSARetrievalTask(BYPASS)
  b = _take(task, "adversarial", 256)
  assert b["adversarial"].all()
  n_look = 0
  for i in range(len(b["doc"])):
    doc, s = b["doc"][i], int(b["src_start"][i])
    facts = [j for j in np.nonzero(doc[:-3] == ht.FACT)[0] if j != s]
    look = [j for j in facts if doc[j + 1] == doc[s + 1] and doc[j + 2] != doc[s + 2]]
    assert look, i                                             # at least one look-alike
    assert all(_in_view(task, int(j)) for j in look), (i, look, s)   # every one in view
    toks = b["tokens"][i]
    for j in look:
      off = j - (task.doc_len - task.tail)
      np.testing.assert_array_equal(toks[off:off + 4], doc[j:j + 4])
      assert toks[off + 1] == toks[-3] and toks[off + 2] != toks[-2]   # same ka as the query
    n_look += len(look)
  assert n_look >= 256
  # without the option the look-alikes are spread over the whole document
  spread = ht.HRSARetrievalTask({**BYPASS, "adversarial_in_tail": False})
  b = _take(spread, "adversarial", 256)
  outside = 0
  for doc, s in zip(b["doc"], b["src_start"]):
    facts = [j for j in np.nonzero(doc[:-3] == ht.FACT)[0] if j != s]
    outside += sum(not _in_view(spread, int(j)) for j in facts if doc[j + 1] == doc[s + 1])
  assert outside > 64


def test_lm_examples_score_every_position_after_the_document():
  task = ht.HRSARetrievalTask({**BYPASS, "text_p": 1.0, "copy_p": 0.0})  # next = perm[cur]
  b = _take(task, "train", 256)
  lm = ~b["is_retrieval"]
  assert 0.7 < lm.mean() < 0.9                                   # 80% LM / 20% retrieval
  assert (b["weights"][lm] == 1).all() and b["weights"].shape[1] == task.tail + 4
  np.testing.assert_array_equal(b["tokens"][lm][:, 1:], b["targets"][lm][:, :-1])
  t0, perm = task.t0, task.perm
  ends_in_text = [(doc, tok) for doc, tok in zip(b["doc"][lm], b["tokens"][lm]) if doc[-1] >= t0]
  assert len(ends_in_text) > 0.8 * lm.sum()     # (a fact may end the document: skipped)
  for doc, tok in ends_in_text:
    assert tok[0] == perm[doc[-1] - t0] + t0                      # the window follows the doc
  ret = b["is_retrieval"]
  assert (b["weights"][ret].sum(1) == 1).all() and (b["weights"][ret][:, -1] == 1).all()
  # the default window overlaps the document's end instead
  over = ht.HRSARetrievalTask({**BYPASS, "lm_after_doc": False})
  b = _take(over, "eval_lm", 64)
  np.testing.assert_array_equal(b["tokens"][:, :over.tail], b["doc"][:, -over.tail:])
  assert (b["weights"] == 1).all() and not b["is_retrieval"].any()


def test_text_has_copy_structure():
  make = lambda p: ht.HRSARetrievalTask({**BYPASS, "text_p": 0.0, "copy_p": p})
  rng = np.random.default_rng(0)

  def repeated(task):   # share of positions equal to the token copy_len..copy_max back
    x = task._text(rng, 4000)
    hits = [any(x[i] == x[i - d] and x[i - 1] == x[i - 1 - d]
                for d in range(task.copy_len, task.copy_max + 1)) for i in range(200, 4000)]
    return np.mean(hits)

  assert repeated(make(0.05)) > repeated(make(0.0)) + 0.15


def test_bypass_splits_hold_out_every_fact():
  task = ht.HRSARetrievalTask(BYPASS)
  facts = lambda b: {(int(d[j + 1]), int(d[j + 2]), int(d[j + 3])) for d in b["doc"]
                     for j in np.nonzero(d[:-3] == ht.FACT)[0]}
  train = facts(_take(task, "train", 640))
  held = set().union(*(facts(_take(task, s, 256)) for s in
                       ("eval", "adversarial", "eval_inside", "eval_beyond", "eval_lm")))
  assert len(train) > 500 and len(held) > 500 and not train & held
  assert all(heldout.binding_is_eval((a - task.ka0, k - task.kb0), v - task.v0, task.n_values)
             for a, k, v in held)


@pytest.mark.parametrize("bad, field", [(dict(inside_fraction=1.5), "task.inside_fraction"),
                                        (dict(copy_p=1.0), "task.copy_p"),
                                        (dict(copy_len=8, copy_max=4), "task.copy_max"),
                                        (dict(tail=16), "task.tail")])
def test_bad_bypass_fields_name_the_field(bad, field):
  with pytest.raises(ConfigError, match=field):
    ht.HRSARetrievalTask.validate({**BYPASS, **bad})


def test_retrieval_warmup_sets_the_mix_then_hands_back():
  bs, warm = 32, 4
  steps = lambda task, n: list(itertools.islice(iter(task.batches("train", bs, 0)), n))
  base = ht.HRSARetrievalTask(BYPASS)
  plain = steps(base, 12)
  # off by default: every train example is drawn as before (one draw against retrieval_fraction)
  want = [np.random.default_rng((0, 0, i)).random() < 0.2 for i in range(12 * bs)]
  np.testing.assert_array_equal(np.concatenate([b["is_retrieval"] for b in plain]), want)
  for frac in (1.0, 0.5):
    task = ht.HRSARetrievalTask({**BYPASS, "retrieval_warmup_steps": warm,
                                 "retrieval_warmup_fraction": frac})
    got = steps(task, 12)
    during = np.concatenate([b["is_retrieval"] for b in got[:warm]])
    assert abs(during.mean() - frac) <= 4 * np.sqrt(frac * (1 - frac) / len(during)), during.mean()
    for a, b in zip(got[warm:], plain[warm:]):   # after the warm-up: the same batches as without
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
  assert [task.retrieval_fraction_at(s) for s in (0, warm - 1, warm)] == [0.5, 0.5, 0.2]


@pytest.mark.parametrize("bad, field", [
    (dict(retrieval_warmup_steps=-1), "task.retrieval_warmup_steps"),
    (dict(retrieval_warmup_fraction=1.2), "task.retrieval_warmup_fraction")])
def test_bad_retrieval_warmup_names_the_field(bad, field):
  with pytest.raises(ConfigError, match=field):
    ht.HRSARetrievalTask.validate({**BYPASS, **bad})


def test_length_curriculum_pads_then_hands_back():
  bs = 16
  steps = lambda task, n: list(itertools.islice(iter(task.batches("train", bs, 0)), n))
  plain = steps(ht.HRSARetrievalTask(BYPASS), 6)
  task = ht.HRSARetrievalTask({**BYPASS, "length_curriculum": ((0, 136), (2, 200), (4, 256))})
  assert [task.active_len_at(s) for s in (0, 1, 2, 3, 4, 99)] == [136, 136, 200, 200, 256, 256]
  got = steps(task, 6)
  for i, b in enumerate(got[:4]):
    pad = task.doc_len - task.active_len_at(i)
    assert b["doc"].shape == (bs, task.doc_len)
    assert (b["doc"][:, :pad] == ht.PAD).all() and (b["doc"][:, pad:] != ht.PAD).all()
    facts = np.nonzero(b["doc"] == ht.FACT)
    assert len(facts[1]) >= bs * 3 and (facts[1] >= pad).all()   # every fact in the active part
    retr = b["is_retrieval"]
    src = b["src_start"][retr]
    assert (src >= pad).all()
    np.testing.assert_array_equal(b["doc"][np.nonzero(retr)[0], src + 3], b["answer"][retr])
    # the decoder's tail is the document's last `tail` tokens, as without the option
    np.testing.assert_array_equal(b["tokens"][retr, :task.tail], b["doc"][retr, -task.tail:])
  assert any(b["is_retrieval"].any() for b in got[:4])
  for a, b in zip(got[4:], plain[4:]):   # at full length: the same batches as without
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  ev = _take(task, "eval", 64)           # eval documents are whole from the start
  assert not (ev["doc"] == ht.PAD).any()


@pytest.mark.parametrize("bad", [((0, 140),), ((5, 136),), ((0, 136), (0, 200)),
                                 ((0, 512),), ((0, 128),)])
def test_bad_length_curriculum_names_the_field(bad):
  with pytest.raises(ConfigError, match="task.length_curriculum"):
    ht.HRSARetrievalTask.validate({**BYPASS, "length_curriculum": bad})
