"""Deterministic synthetic tasks for HRRM: multi-step reasoning, planning traces, arithmetic.

Each example is a dict of int32 arrays of fixed length T (padded with 0):
  inputs, targets   the stream and what each position must predict
  answer            0: not scored; k: part of answer k (an answer is right when all its tokens are)
plus task-specific keys (loss weights, control classes, prompt lengths). Example i
of split s under seed k is always the same (memjax.data.recall.SyntheticTask).

The retrieval episodes for the Memory model are memjax.data.recall.AssocRecall:
key-value pairs in the first segment, queries two segments later, beyond the
attention window of a chunked model.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from memjax.core import config as cfg
from memjax.data import heldout as heldout_lib
from memjax.data.recall import SyntheticTask


class _Fixed(SyntheticTask):
  """A SyntheticTask whose examples are one segment of `length` tokens."""

  def __init__(self, c, length: int):
    self.c = c
    self.segment_len = length
    self.num_segments = 1


# --------------------------------------------------------------------------- pointer chasing

class PointerRoots(_Fixed):
  """Find the root of every node of a forest of chains (pointer jumping).

  Position i holds parent(i) (a root is its own parent); the target at i is the
  root of i. A chain of depth d needs d hops, or log2(d) pointer-doubling steps:
  a fixed amount of computation per step cannot shortcut it, and once at the
  root further steps change nothing (a fixed point), so accuracy should rise
  with the number of recurrent cycles. Scored: the whole example (all nodes).
  Held out: a forest (the parent array) is eval-only or train-only (a hash of it).
  """

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="pointer_roots", num_nodes=16, min_chains=1,
                                          max_chains=2))

  @staticmethod
  def validate(c) -> None:
    root = ml_collections.ConfigDict({"task": c})
    cfg.positive(root, "task.num_nodes", "task.min_chains", "task.max_chains")
    cfg.require(c.min_chains <= c.max_chains <= c.num_nodes, "task.max_chains",
                f"need min_chains <= max_chains <= num_nodes, got {c.min_chains}, "
                f"{c.max_chains}, {c.num_nodes}")

  def __init__(self, c):
    super().__init__(c, c.num_nodes)
    self.vocab_size = c.num_nodes
    self.max_answers = 1
    # chance: guessing a node per position, all positions right
    self.chance = float((1.0 / c.num_nodes) ** c.num_nodes)

  def forest(self, rng):
    n = self.c.num_nodes
    chains = int(rng.integers(self.c.min_chains, self.c.max_chains + 1))
    order = rng.permutation(n)
    cuts = np.sort(rng.choice(np.arange(1, n), chains - 1, replace=False)) if chains > 1 else []
    parent = np.zeros(n, np.int64)
    root = np.zeros(n, np.int64)
    for seg in np.split(order, cuts):
      parent[seg[0]] = seg[0]
      parent[seg[1:]] = seg[:-1]
      root[seg] = seg[0]
    return parent, root

  def example(self, rng, heldout):
    parent, root = heldout_lib.draw(rng, self.forest, lambda f: tuple(f[0]), heldout, "forest")
    n = self.c.num_nodes
    return {"inputs": parent.astype(np.int32), "targets": root.astype(np.int32),
            "answer": np.ones(n, np.int32)}


# --------------------------------------------------------------------------- planning DSL

CONTROL_TOKENS = ("<PLAN>", "<SUBGOAL>", "<ACTION>", "<CHECK>", "<ENDPLAN>")
THOUGHT_TOKENS = ("<SoT>", "<EoT>")
SPECIAL_TOKENS = ("<pad>", "<eos>") + CONTROL_TOKENS + THOUGHT_TOKENS


class PlanTraces(_Fixed):
  """Plans in the DSL that reach a goal count by subgoals of 1-3 actions:

    <PLAN> goal 7 <SUBGOAL> 3 <ACTION> left <ACTION> up <ACTION> up <CHECK> 3
           <SUBGOAL> 2 ... <CHECK> 7 <ENDPLAN> <eos>

  After `<SUBGOAL> d` come exactly d actions, then `<CHECK> s` with the running
  sum s; the plan ends when s reaches the goal. Where a control token comes
  next is therefore determined (counting, comparing); the subgoal sizes and
  action words are random. `ctrl` holds, per position, the control class of
  the next token (0: not a control token; 1..5: CONTROL_TOKENS).
  Held out: a plan is eval-only when the sum of its action indices is 0 mod 4, train-only
  otherwise; the last action is drawn to land in the split, so every goal and every subgoal
  sequence occurs in both splits with a quarter of its plans held out, and no eval plan
  occurs in training. (The control classes follow from the subgoal sizes alone, and those
  51 structures (max_goal 6) are shared: what is held out is the plan, not its structure.)
  """

  ACTIONS = ("left", "right", "up", "down")

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="plan_traces", max_goal=9, max_len=64))

  @staticmethod
  def validate(c) -> None:
    root = ml_collections.ConfigDict({"task": c})
    cfg.positive(root, "task.max_goal", "task.max_len")
    need = 4 + 6 * c.max_goal + 1
    cfg.require(c.max_len >= need, "task.max_len",
                f"{c.max_len} is too short for goals up to {c.max_goal} (need {need})")

  def __init__(self, c):
    super().__init__(c, c.max_len)
    words = list(SPECIAL_TOKENS) + ["goal"] + list(self.ACTIONS) + [str(i) for i in
                                                                    range(c.max_goal + 1)]
    self.vocab = {w: i for i, w in enumerate(words)}
    self.words = words
    self.vocab_size = len(words)
    self.max_answers = 1
    self.chance = 1.0 / (len(CONTROL_TOKENS) + 1)

  def encode(self, words) -> np.ndarray:
    return np.array([self.vocab[w] for w in words], np.int64)

  @classmethod
  def plan_is_eval(cls, actions) -> bool:
    return sum(actions) % len(cls.ACTIONS) == 0

  def example(self, rng, heldout):
    c = self.c
    goal = int(rng.integers(1, c.max_goal + 1))
    sizes, s = [], 0
    while s < goal:
      sizes.append(int(rng.integers(1, min(3, goal - s) + 1)))
      s += sizes[-1]
    a = len(self.ACTIONS)
    actions = [int(x) for x in rng.integers(0, a, goal)]
    # the last action puts the plan in its split: eval iff sum = 0 mod a (a quarter of plans)
    rest = -sum(actions[:-1]) % a
    actions[-1] = rest if heldout else (rest + 1 + int(rng.integers(a - 1))) % a
    assert self.plan_is_eval(actions) == heldout
    words, s, it = ["<PLAN>", "goal", str(goal)], 0, iter(actions)
    for d in sizes:
      words += ["<SUBGOAL>", str(d)]
      for _ in range(d):
        words += ["<ACTION>", self.ACTIONS[next(it)]]
      s += d
      words += ["<CHECK>", str(s)]
    words += ["<ENDPLAN>", "<eos>"]
    tok = np.zeros(c.max_len + 1, np.int64)
    ids = self.encode(words)
    tok[:ids.size] = ids
    ctrl_id = {self.vocab[w]: i + 1 for i, w in enumerate(CONTROL_TOKENS)}
    targets = tok[1:]
    ctrl = np.array([ctrl_id.get(int(t), 0) for t in targets], np.int64)
    valid = np.arange(c.max_len) < ids.size - 1
    return {"inputs": tok[:-1].astype(np.int32), "targets": targets.astype(np.int32),
            "ctrl": ctrl.astype(np.int32), "weight": valid.astype(np.float32),
            "answer": np.zeros(c.max_len, np.int32)}


# --------------------------------------------------------------------------- arithmetic

class ArithmeticScratchpad(_Fixed):
  """Word problems with a scratchpad in a thought span, then the answer:

    mia has 7 apples . she gets 5 more . she gives 3 away . how many ?
    <SoT> 7 + 5 = 12 ; 12 - 3 = 9 <EoT> 9 <eos>

  Numbers are single tokens 0..max_number. `weight` marks the supervised part
  (thought span and answer); `answer` marks the answer token; `prompt_len` is
  where generation starts (the position of <SoT>).
  """

  NAMES = ("mia", "tom", "ana", "raj", "lea", "kim")
  ITEMS = ("apples", "coins", "books", "cards")
  FILL = ("has", "she", "gets", "more", "gives", "away", "how", "many", "?", ".", "+", "-",
          "=", ";", "loses", "finds")

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="arith_scratchpad", max_start=20, max_operand=9,
                                          num_ops=2, max_len=48))

  @staticmethod
  def validate(c) -> None:
    root = ml_collections.ConfigDict({"task": c})
    cfg.positive(root, "task.max_start", "task.max_operand", "task.num_ops", "task.max_len")
    need = 4 + 5 * c.num_ops + 4 + 6 * c.num_ops + 4
    cfg.require(c.max_len >= need, "task.max_len",
                f"{c.max_len} is too short for {c.num_ops} operations (need {need})")

  def __init__(self, c):
    super().__init__(c, c.max_len)
    self.max_number = c.max_start + c.num_ops * c.max_operand
    words = (list(SPECIAL_TOKENS) + list(self.NAMES) + list(self.ITEMS) + list(self.FILL)
             + [str(i) for i in range(self.max_number + 1)])
    self.vocab = {w: i for i, w in enumerate(words)}
    self.words = words
    self.vocab_size = len(words)
    self.max_answers = 1
    self.chance = 1.0 / (self.max_number + 1)
    self.number0 = self.vocab["0"]

  def encode(self, words) -> np.ndarray:
    return np.array([self.vocab[w] for w in words], np.int64)

  def operands(self, rng, heldout: bool) -> tuple[int, ...]:
    """(start, b_1, ..., b_num_ops): the operand combination identifies a problem (names, items
    and +/- aside); a combination is eval-only or train-only, never both (memjax.data.heldout).
    Single steps `a op b = r` do recur across the splits: the task measures chaining known
    steps, not inventing arithmetic facts for unseen single-token numbers."""
    c = self.c
    make = lambda rng: (int(rng.integers(1, c.max_start + 1)),) + tuple(
        int(b) for b in rng.integers(1, c.max_operand + 1, c.num_ops))
    return heldout_lib.draw(rng, make, lambda ops: ops, heldout, "operand combination")

  def problem(self, rng, heldout: bool):
    x, *bs = self.operands(rng, heldout)
    q = [str(rng.choice(self.NAMES)), "has", str(x), str(rng.choice(self.ITEMS)), "."]
    pad, steps = [], []
    for b in bs:
      if rng.random() < 0.5 or b > x:
        q += ["she", "gets", str(b), "more", "."]
        steps.append((x, "+", b, x + b))
        x = x + b
      else:
        q += ["she", "gives", str(b), "away", "."]
        steps.append((x, "-", b, x - b))
        x = x - b
    q += ["how", "many", "?"]
    for i, (a, op, b, r) in enumerate(steps):
      pad += ([";"] if i else []) + [str(a), op, str(b), "=", str(r)]
    return q, pad, x

  def example(self, rng, heldout):
    q, pad, ans = self.problem(rng, heldout)
    words = q + ["<SoT>"] + pad + ["<EoT>", str(ans), "<eos>"]
    ids = self.encode(words)
    n = self.c.max_len
    tok = np.zeros(n + 1, np.int64)
    tok[:ids.size] = ids
    prompt_len = len(q) + 1                      # inputs up to and including <SoT>
    pos = np.arange(n)
    weight = ((pos >= prompt_len - 1) & (pos < ids.size - 1)).astype(np.float32)
    answer = np.zeros(n, np.int64)
    answer[ids.size - 3] = 1                     # predicts the answer number
    return {"inputs": tok[:-1].astype(np.int32), "targets": tok[1:].astype(np.int32),
            "weight": weight, "answer": answer.astype(np.int32),
            "prompt_len": np.int32(prompt_len)}
