"""Digit-first KV recall with the reader's own tokenizer: the answer lies in the removed part.

A prompt is a run of turns, each binding a key to one digit (`KEY05 = 8`), then a question
ending right before the digit (`KEY05 = `: the digit is the next token). A budget of B tokens
keeps the last B tokens of the prompt; everything before (exactly `removed_tokens` tokens, the
BOS first) is removed and goes to the compressor. The asked statement always lies whole in the
removed part, which holds at least `min_removed` whole statements; keys are distinct within an
episode, so the kept part never names the asked key.

Variants: "templated" (`KEYnn = d` lines) and "prose" (key names like "the red box", six
statement forms including digit-first ones, varied separators, distractor sentences between
turns), so that matching a template cannot score.

Train and eval are disjoint by construction, in one of two ways (`holdout`):
  "bindings"  in their (key, digit) assignments: each key has two eval digits, drawn once at
              random per key (EVAL_DIGITS), and every statement of an eval episode uses an eval
              pair, every statement of a train episode a train pair; no eval binding is ever
              trained on. The eval digits share no rule across keys, so the kept statements say
              nothing about a removed key's digit (`copy_baselines` measures it).
  "keys"      in their keys: 30 of the 100 keys (is_eval_key) appear only in eval episodes, the
              other 70 only in train episodes, and every digit is drawn uniformly per episode.
              A binding then recurs across train episodes no more than chance allows, so a
              reader gains nothing in training by remembering bindings instead of reading them.
Episodes are deterministic: example i of a split under a seed is always the same.

Each example (numpy):
  removed    R      the removed tokens (BOS first), what the compressor reads
  kept       B      the last B tokens, ending with the question
  full       R+B    the whole prompt (the oracle's input)
  summary    B      the asked statement as text, then the last B - len(statement) kept tokens
  answer     ()     the asked digit, 0-9
  asked_slot ()     which of the first `slots` statements is asked
  slot_digits / slot_keys   S     digits and keys of the first S = min_removed statements
  slot_questions            SxQ   the question for each of those statements (pad-padded)
  slot_queries              SxQ   the same, left-filled with the filler token (end = digit next)
  segments   R      which of those S statements each removed token belongs to (-1: none)
  digit_pos  S      where each of those statements' digit lies in the removed part
"""
from __future__ import annotations

import functools
import itertools
import sys

import grain
import ml_collections
import numpy as np

from memjax.core import config as cfg
from memjax.core.config import ConfigError
from memjax.latentem import reader_loading

SPLITS = {"train": 0, "eval": 1, "test": 2}
VARIANTS = ("templated", "prose")
HOLDOUTS = ("bindings", "keys")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "brown", "purple", "orange", "silver")
OBJECTS = ("box", "lamp", "door", "coin", "book", "ship", "tree", "bell", "road", "cup")
# (prefix, suffix) around the digit; {k} is the key name. Two are digit-first.
PROSE_FORMS = (("{k} = ", "."), ("{k} is ", "."), ("The value of {k} is ", "."),
               ("Set {k} to ", "."), ("", " is stored in {k}."), ("", " belongs to {k}."))
PROSE_SEPS = (" ", "\n", "\n\n")
DISTRACTORS = ("The weather was calm that day.", "Nobody remembered the meeting.",
               "A bird sang outside the window.", "The train left late again.",
               "She put the kettle on and waited.", "Everyone agreed it was a long week.",
               "The report is due on Friday.", "He could not find his glasses.")


# Drawn per key, not by a rule over (key, digit): with a rule shared by keys alike in name
# (say, keys ending in the same digit), a reader that copies the digit of the kept key most
# like the asked one beats chance on eval with no memory at all.
# Every digit is an eval digit of exactly 20 keys, so no digit is likelier in eval than in train.
def _eval_digits(seed: int = 2026_12_03) -> tuple[frozenset[int], ...]:
  rng = np.random.default_rng(seed)
  pairs = [frozenset(p) for p in itertools.combinations(range(10), 2)] * 2   # each digit 18x
  for _ in range(2):                                       # + two perfect matchings: 20x
    pairs += [frozenset(p) for p in rng.permutation(10).reshape(5, 2).tolist()]
  return tuple(pairs[i] for i in rng.permutation(len(pairs)))


EVAL_DIGITS = _eval_digits()


def is_eval_pair(key: int, digit: int) -> bool:
  return digit in EVAL_DIGITS[key]


def allowed_digits(split: str, key: int) -> list[int]:
  want_eval = split != "train"
  return [d for d in range(10) if is_eval_pair(key, d) == want_eval]


# Three colours per object and three objects per colour (key // 10, key % 10): every word of an
# eval key's name also names train keys, so eval asks for unseen names made of seen words.
def is_eval_key(key: int) -> bool:
  return (key % 10 - key // 10) % 10 < 3


def split_keys(split: str, num_keys: int) -> np.ndarray:
  want_eval = split != "train"
  return np.array([k for k in range(num_keys) if is_eval_key(k) == want_eval])


class LatentemKV:
  """The task of the Latentem design (see the module docstring)."""

  chance = 0.1

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="latentem_kv", reader="gemma3-270m", reader_dtype="float32", variant="templated",
        budget=64, removed_tokens=72, min_removed=8, num_keys=100, distractor_prob=0.3,
        holdout="bindings", overfit_one=False))

  @staticmethod
  def validate(c) -> None:
    root = ml_collections.ConfigDict({"task": c})
    cfg.one_of(root, "task.variant", VARIANTS)
    if "holdout" in c:
      cfg.one_of(root, "task.holdout", HOLDOUTS)
    cfg.positive(root, "task.budget", "task.removed_tokens", "task.min_removed", "task.num_keys")
    cfg.require(c.num_keys <= 100, "task.num_keys", f"at most 100 keys, got {c.num_keys}")
    cfg.require(c.min_removed >= 8, "task.min_removed",
                f"the removed part must hold at least 8 statements, got {c.min_removed}")
    if c.get("holdout", "bindings") == "keys":
      fewest = min(len(split_keys(s, c.num_keys)) for s in ("train", "eval"))
      cfg.require(fewest > c.min_removed, "task.num_keys",
                  f"holdout 'keys' leaves {fewest} keys to a split of {c.num_keys} keys; an "
                  f"episode needs more than {c.min_removed} distinct keys")

  def __init__(self, c: ml_collections.ConfigDict):
    self.validate(c)
    self.c = c
    self.tokenizer = reader_loading.load(c.reader, c.get("reader_dtype", "float32")).tokenizer
    self.digit_ids = check_tokenizer(self.tokenizer, c.variant)
    self.bos = self.tokenizer.bos_id
    self.pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
    self.filler = self._enc("\n")[0]
    self.slots = c.min_removed
    self.budget = c.budget
    self.removed_tokens = c.removed_tokens
    self.question_len = max(len(self.question(k)) for k in range(c.num_keys))
    cfg.require(self.question_len < c.budget, "task.budget",
                f"{c.budget} tokens cannot hold the {self.question_len}-token question")
    self.max_answers = 1
    self._check_fits()

  # --- text -> tokens ------------------------------------------------------------------------

  @functools.lru_cache(maxsize=None)
  def _enc(self, text: str) -> tuple[int, ...]:
    return tuple(self.tokenizer.encode(text)) if text else ()

  def key_name(self, key: int) -> str:
    if self.c.variant == "templated":
      return f"KEY{key:02d}"
    return f"the {COLORS[key // 10]} {OBJECTS[key % 10]}"

  def question(self, key: int) -> tuple[int, ...]:
    if self.c.variant == "templated":
      return self._enc(f"\nQuestion:\n{self.key_name(key)} = ")
    return self._enc(f"\nQuestion: what is the value of {self.key_name(key)}? Answer: ")

  def statement(self, key: int, digit: int, form: int = 0, sep: str = "\n") -> tuple[int, ...]:
    """One statement's tokens (the digit a single token by construction; see check_tokenizer)."""
    if self.c.variant == "templated":
      pre, suf = f"{self.key_name(key)} = ", "\n"
      sep = ""
    else:
      pre, suf = PROSE_FORMS[form]
      pre, suf = pre.format(k=self.key_name(key)), suf.format(k=self.key_name(key))
    return self._enc(sep + pre) + (self.digit_ids[digit],) + self._enc(suf)

  # --- episodes ------------------------------------------------------------------------------

  def _turns(self, rng, keys, digits):
    """(tokens of the statement with what precedes it, tokens of the bare statement, offset of
    the digit in the first) per key."""
    out = []
    for k, d in zip(keys, digits):
      if self.c.variant == "templated":
        s = self.statement(k, d)
        out.append((s, s, len(s) - 2))
        continue
      form = int(rng.integers(len(PROSE_FORMS)))
      sep = PROSE_SEPS[int(rng.integers(len(PROSE_SEPS)))]
      lead = ()
      if rng.random() < self.c.distractor_prob:
        lead = self._enc(sep + DISTRACTORS[int(rng.integers(len(DISTRACTORS)))])
      pre = PROSE_FORMS[form][0].format(k=self.key_name(k))
      out.append((lead + self.statement(k, d, form, sep), self.statement(k, d, form, ""),
                  len(lead) + len(self._enc(sep + pre))))
    return out

  def episode(self, rng: np.random.Generator, split: str, budget: int | None = None) -> dict:
    return self._episode(rng, split, budget)[0]

  def _episode(self, rng, split, budget):
    """(the example, (key, digit, digit position) of every statement in the prompt)."""
    budget = self.budget if budget is None else budget
    c, r = self.c, self.removed_tokens
    total = r + budget
    for _ in range(100):
      if c.get("holdout", "bindings") == "keys":
        pool = split_keys(split, c.num_keys)
        keys = rng.choice(pool, min(len(pool), total // 4 + 1), replace=False)
        digits = rng.integers(10, size=len(keys))
      else:
        keys = rng.choice(c.num_keys, min(c.num_keys, total // 4 + 1), replace=False)
        digits = np.array([rng.choice(allowed_digits(split, int(k))) for k in keys])
      asked = int(rng.integers(self.slots))
      q = self.question(int(keys[asked]))
      body = total - 1 - len(q)
      turns, used = [], 0
      for t, bare, at in self._turns(rng, keys, digits):
        if used + len(t) > body:
          break
        turns.append((t, bare, at))
        used += len(t)
      pad = body - used
      ids = [self.bos] + [self.filler] * pad
      ends, digit_at = [], []
      for t, _, at in turns:
        digit_at.append(len(ids) + at)
        ids.extend(t)
        ends.append(len(ids))
      ids.extend(q)
      whole_removed = sum(e <= r for e in ends)
      if whole_removed >= self.slots and len(ids) == total:
        break
    else:
      raise ConfigError(f"task.removed_tokens: {r} tokens cannot hold {self.slots} whole "
                        f"statements (the {c.variant} variant); raise it")
    ids = np.asarray(ids, np.int32)
    s = self.slots
    bare = turns[asked][1]
    summary = np.concatenate([np.asarray(bare, np.int32), ids[r + len(bare):]])
    # Which of the first S statements each removed token belongs to (-1: none of them), and
    # where each one's digit is: the statement boundaries the task knows, for a compressor
    # that pools one latent per statement and for the distillation targets.
    segments = np.full((r,), -1, np.int32)
    for j in range(s):
      segments[ends[j] - len(turns[j][0]):ends[j]] = j
    slot_q = np.full((s, self.question_len), self.pad, np.int32)
    # The same questions left-filled with the filler token, so each ends right before its digit
    # (the reader answers at the last position).
    slot_qry = np.full((s, self.question_len), self.filler, np.int32)
    for j in range(s):
      qj = self.question(int(keys[j]))
      slot_q[j, :len(qj)] = qj
      slot_qry[j, self.question_len - len(qj):] = qj
    return {"removed": ids[:r], "kept": ids[r:], "full": ids, "summary": summary,
            "answer": np.int32(digits[asked]), "asked_slot": np.int32(asked),
            "asked_key": np.int32(keys[asked]),
            "slot_digits": digits[:s].astype(np.int32), "slot_keys": keys[:s].astype(np.int32),
            "slot_questions": slot_q, "slot_queries": slot_qry, "segments": segments,
            "digit_pos": np.asarray(digit_at[:s], np.int32), "num_statements": np.int32(len(turns)),
            "whole_removed": np.int32(whole_removed)}, [
                (int(k), int(d), p) for k, d, p in zip(keys, digits, digit_at)]

  def example_at(self, split: str, seed: int, index: int, budget: int | None = None) -> dict:
    if split not in SPLITS:
      raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if self.c.get("overfit_one", False):
      split, index = "train", 0
    return self.episode(np.random.default_rng([seed, SPLITS[split], index]), split, budget)

  def batches(self, split: str, batch_size: int, seed: int, budget: int | None = None):
    """An endless, resumable (get_state/set_state) iterator of batches."""
    if split not in SPLITS:
      raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return grain.MapDataset.range(sys.maxsize).map(
        lambda i: self.example_at(split, seed, int(i), budget)).batch(
            batch_size, drop_remainder=True).to_iter_dataset()

  def copy_baselines(self, split: str = "eval", n: int = 1000, seed: int = 0) -> dict:
    """Accuracy, without any memory, of answering with a digit the kept part shows: the digit
    of the last kept statement whose key shares its first or its last digit with the asked key
    (in prose: its colour or its object; else the most common kept digit), or the most common
    kept digit. What the task's structure allows a reader that ignores the memory; chance 0.1
    unless the train/eval split leaks through other keys."""
    rules = {"same_first": lambda a, k: a // 10 == k // 10,
             "same_last": lambda a, k: a % 10 == k % 10, "most_common": lambda a, k: False}
    hits = dict.fromkeys(rules, 0)
    r = self.removed_tokens
    for i in range(n):
      ex, statements = self._episode(np.random.default_rng([seed, SPLITS[split], i]), split,
                                     None)
      kept = [(k, d) for k, d, p in statements if p >= r]
      common = np.bincount([d for _, d in kept], minlength=10).argmax() if kept else 0
      for name, rule in rules.items():
        like = [d for k, d in kept if rule(int(ex["asked_key"]), k)]
        hits[name] += (like[-1] if like else common) == ex["answer"]
    return {f"copy_baseline_{k}": float(v / n) for k, v in hits.items()}

  def _check_fits(self) -> None:
    rng = np.random.default_rng(12345)
    for split in ("train", "eval"):
      for _ in range(4):
        self.episode(rng, split)


def check_tokenizer(tokenizer, variant: str) -> tuple[int, ...]:
  """The ten digit token ids; ConfigError unless every digit is one token everywhere the task
  puts one (after a space, a newline, at a statement's start), as the task assumes."""
  ids = []
  for d in range(10):
    t = list(tokenizer.encode(str(d)))
    if len(t) != 1:
      raise ConfigError(f"task.reader: the tokenizer splits the digit {d!r} into {len(t)} tokens "
                        f"{t}; the task needs one token per digit")
    ids.append(t[0])
  if len(set(ids)) != 10:
    raise ConfigError("task.reader: the tokenizer maps two digits to one token")
  contexts = [("KEY05 = ", "\n"), ("\nQuestion:\nKEY05 = ", "")]
  if variant == "prose":
    contexts += [(sep + pre.format(k="the red box"), suf.format(k="the red box"))
                 for pre, suf in PROSE_FORMS for sep in PROSE_SEPS]
    contexts.append(("\nQuestion: what is the value of the red box? Answer: ", ""))
  for pre, suf in contexts:
    for d in range(10):
      whole = list(tokenizer.encode(pre + str(d) + suf))
      parts = (list(tokenizer.encode(pre)) if pre else []) + [ids[d]] + (
          list(tokenizer.encode(suf)) if suf else [])
      if whole != parts:
        raise ConfigError(
            f"task.reader: the tokenizer splits digits differently than the task assumes: "
            f"{pre + str(d) + suf!r} -> {whole}, expected {parts} (the digit one token of its own)")
  return tuple(ids)
