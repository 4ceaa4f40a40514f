"""HRRM synthetic tasks: deterministic, and their targets are what the text says."""
import numpy as np

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
