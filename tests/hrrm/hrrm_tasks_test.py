"""HRRM synthetic tasks: deterministic, and their targets are what the text says."""
import itertools

import numpy as np
import pytest

from memjax.data import heldout
from memjax.hrrm import tasks as ht


def test_pointer_roots_targets_follow_the_pointers():
  t = ht.PointerRoots(ht.PointerRoots.defaults())
  for i in range(20):
    ex = t.example_at("train", 0, i)
    parent = ex["inputs"]
    for node in range(t.c.num_nodes):
      r = node
      for _ in range(t.c.num_nodes):
        r = parent[r]
      assert parent[r] == r and ex["targets"][node] == r
  a, b = t.example_at("eval", 3, 7), t.example_at("eval", 3, 7)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(t.example_at("train", 3, 7)["inputs"], a["inputs"]) or \
      not np.array_equal(t.example_at("train", 3, 8)["inputs"], a["inputs"])


def test_plan_traces_control_classes_and_sums():
  t = ht.PlanTraces(ht.PlanTraces.defaults())
  for i in range(20):
    ex = t.example_at("train", 1, i)
    words = [t.words[x] for x in ex["inputs"]]
    goal = int(words[2])
    checks = [int(words[j + 1]) for j, w in enumerate(words) if w == "<CHECK>"]
    assert checks[-1] == goal and checks == sorted(checks)
    # ctrl[j] names the control token at targets[j]
    for j, c in enumerate(ex["ctrl"]):
      w = t.words[ex["targets"][j]]
      assert (c > 0) == (w in ht.CONTROL_TOKENS)
      if c:
        assert ht.CONTROL_TOKENS[c - 1] == w


def test_arithmetic_scratchpad_is_right():
  t = ht.ArithmeticScratchpad(ht.ArithmeticScratchpad.defaults())
  for i in range(20):
    ex = t.example_at("train", 2, i)
    words = [t.words[x] for x in ex["inputs"]]
    sot, eot = words.index("<SoT>"), words.index("<EoT>")
    assert ex["prompt_len"] == sot + 1
    for step in " ".join(words[sot + 1:eot]).split(" ; "):
      a, op, b, _, r = step.split()
      assert int(r) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    ans = t.words[ex["targets"][ex["answer"] > 0][0]]
    assert ans == words[eot + 1] == r
    assert ex["weight"][sot] == 1 and ex["weight"][sot - 1] == 0


def _arith_operands(t, ex):
  words = [t.words[x] for x in ex["inputs"]]
  return tuple(int(w) for w in words[:words.index("<SoT>")] if w.isdigit())


def _plan(t, ex):
  return tuple(int(x) for x in ex["inputs"][ex["weight"] > 0])


@pytest.mark.parametrize("klass, ident, n", [
    (ht.PointerRoots, lambda t, ex: tuple(ex["inputs"]), 1000),
    (ht.PlanTraces, _plan, 1000),
    (ht.ArithmeticScratchpad, _arith_operands, 1000)])
@pytest.mark.parametrize("size", ["defaults", "tiny"])
def test_eval_examples_never_occur_in_training(klass, ident, n, size):
  """Over the whole problem space where it is small, else over more draws than eval uses."""
  c = klass.defaults()
  if size == "tiny":   # the tests' configs: small spaces, where overlap would be likely
    c.update({ht.PointerRoots: dict(num_nodes=6, max_chains=3),
              ht.PlanTraces: dict(max_goal=3, max_len=24),
              ht.ArithmeticScratchpad: dict(max_start=5, max_operand=3, num_ops=1,
                                            max_len=32)}[klass])
  t = klass(c)
  train = {ident(t, t.example_at("train", s, i)) for s in (0, 1) for i in range(n)}
  held = {ident(t, t.example_at(split, 0, i)) for split in ("eval", "test") for i in range(n)}
  assert len(held) > 1 and not train & held
  if klass is ht.ArithmeticScratchpad:
    assert all(heldout.in_eval(*ops) for ops in held)
    assert not any(heldout.in_eval(*ops) for ops in train)


def test_arithmetic_eval_operands_are_a_quarter_of_the_space_and_unseen():
  """The Reasoner config's space: 20 starts x 9 x 9 operands = 1620 combinations."""
  t = ht.ArithmeticScratchpad(ht.ArithmeticScratchpad.defaults())
  space = list(itertools.product(range(1, 21), range(1, 10), range(1, 10)))
  held = [ops for ops in space if heldout.in_eval(*ops)]
  assert 0.2 < len(held) / len(space) < 0.3
  train = {_arith_operands(t, t.example_at("train", 0, i)) for i in range(3000)}
  assert train.isdisjoint(held) and len(train) > 0.9 * (len(space) - len(held))


def test_plan_split_keeps_goals_and_subgoal_sizes_in_both_splits():
  c = ht.PlanTraces.defaults()
  c.update(max_goal=6, max_len=48)   # configs/hrrm_planner.py: 51 subgoal sequences
  t = ht.PlanTraces(c)
  structure = lambda ex: tuple(w for w in (t.words[x] for x in ex["inputs"][ex["weight"] > 0])
                               if w not in t.ACTIONS)
  # one draw, either split: the same goal and subgoal sizes, the plans differ in the last action
  for i in range(200):
    a, b = (t.example(np.random.default_rng(i), h) for h in (True, False))
    assert structure(a) == structure(b) and not np.array_equal(a["inputs"], b["inputs"])
  ev = [t.example_at("eval", 0, i) for i in range(400)]
  tr = [t.example_at("train", 0, i) for i in range(1600)]
  acts = lambda ex: [t.ACTIONS.index(t.words[x]) for x in ex["inputs"] if t.words[x] in t.ACTIONS]
  assert all(ht.PlanTraces.plan_is_eval(acts(e)) for e in ev)
  assert not any(ht.PlanTraces.plan_is_eval(acts(e)) for e in tr)
  # every action word still occurs at every place in training
  assert {a for e in tr for a in acts(e)} == set(range(4))
