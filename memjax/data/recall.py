"""Synthetic recall tasks built so that only memory can answer.

Every example is a token stream of `num_segments * segment_len` tokens with
next-token targets and an `answer` id per position (0: not scored, k: token
of answer k; an answer is right when all its tokens are). The information an
answer needs sits at least two segments before the question, so a model that
sees one segment at a time can only answer through its memory.
"""
from __future__ import annotations

import dataclasses
import sys

import grain
import ml_collections
import numpy as np

from memjax.core import config as cfg
from memjax.data import heldout as heldout_lib

SPLITS = {"train": 0, "eval": 1, "test": 2}


class SyntheticTask:
  """Deterministic examples: example i of split s under seed k is always the same."""

  vocab_size: int
  chance: float
  segment_len: int
  num_segments: int
  max_answers: int

  @staticmethod
  def validate_stream(c) -> None:
    k = c.get("stream_segments", 0)
    cfg.require(isinstance(k, int) and k >= 0, "task.stream_segments", f"must be >= 0, got {k!r}")
    cfg.require(not k or c.num_segments % k == 0, "task.stream_segments",
                f"{k} does not divide task.num_segments={c.num_segments}")

  def __init__(self, c: ml_collections.ConfigDict):
    self.validate_stream(c)
    self.c = c
    self.segment_len = c.segment_len
    self.num_segments = c.num_segments

  @property
  def length(self) -> int:
    return self.segment_len * self.num_segments

  @property
  def answer_tail(self) -> int:
    """Every scored target of a training batch lies in its last `answer_tail` positions: these
    tasks ask in their last segment (a stream's chunks hold no answer but in the last one's
    last segment). THEN's loss runs its head there only (memjax.core.losses.scored_tail)."""
    return self.segment_len

  def example(self, rng: np.random.Generator, heldout: bool) -> dict[str, np.ndarray]:
    """One example from the held-out part of the problem space (heldout) or the training part
    (memjax.data.heldout): no eval example is, or asks for a fact of, any training example."""
    raise NotImplementedError

  def example_at(self, split: str, seed: int, index: int) -> dict[str, np.ndarray]:
    if split not in SPLITS:
      raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return self.example(np.random.default_rng([seed, SPLITS[split], index]),
                        heldout_lib.is_eval_split(split))

  def dataset(self, split: str, seed: int) -> grain.MapDataset:
    if split not in SPLITS:
      raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return grain.MapDataset.range(sys.maxsize).map(
        lambda i: self.example_at(split, seed, int(i)))

  def batches(self, split: str, batch_size: int, seed: int,
              rows: tuple[int, int] | None = None) -> grain.IterDataset:
    """An endless, resumable (get_state/set_state) iterator of batches.

    `rows=(start, stop)` (multi-host: this process's share) yields only those rows of each
    global batch of `batch_size`, building only their examples; the iterator state is the
    batch index, the same in every process.

    With task.stream_segments = k > 0, training batches are contiguous streams: batch n
    holds segments [k*j, k*(j+1)) of the same `batch_size` examples, j = n mod (N/k), and
    `reset` marks the first chunk of each example, so the memory a batch leaves is the memory
    the next batch starts from (stateful TBPTT across batches).
    """
    k = self.c.get("stream_segments", 0)
    whole = self._batched(self.dataset(split, seed), batch_size, rows)
    if not k or split != "train":
      return whole.to_iter_dataset()
    chunks = self.num_segments // k
    width = k * self.segment_len

    def chunk(n):
      b = whole[n // chunks]
      j = n % chunks
      out = {key: v[:, j * width:(j + 1) * width] for key, v in b.items()}
      out["reset"] = np.full((len(out["inputs"]),), j == 0)
      return out

    return grain.MapDataset.range(sys.maxsize).map(chunk).to_iter_dataset()

  @staticmethod
  def _batched(ds: grain.MapDataset, batch_size: int, rows) -> grain.MapDataset:
    if rows is None:
      return ds.batch(batch_size, drop_remainder=True)
    lo, hi = rows

    def rows_of(n):  # global batch n holds examples [n * batch_size, (n + 1) * batch_size)
      exs = [ds[n * batch_size + i] for i in range(lo, hi)]
      return {k: np.stack([e[k] for e in exs]) for k in exs[0]}

    return grain.MapDataset.range(sys.maxsize // batch_size).map(rows_of)

  def _stream(self, tokens: np.ndarray, answer: np.ndarray) -> dict[str, np.ndarray]:
    """inputs = tokens, targets = tokens shifted left; answer marks scored targets."""
    assert tokens.shape == (self.length + 1,), tokens.shape
    return {
        "inputs": tokens[:-1].astype(np.int32),
        "targets": tokens[1:].astype(np.int32),
        "answer": answer[1:].astype(np.int32),
    }


class AssocRecall(SyntheticTask):
  """Key-value pairs in segment 0, filler in between, queries in the last segment.

  Tokens: 0 pad | keys | values | filler. The query segment repeats
  `num_queries` of the keys, each followed by its value (the scored target).
  Held out: a key -> value binding is eval-only or train-only (memjax.data.heldout); every
  key keeps a quarter of the values for eval, so an eval answer was never bound to its key
  in training.
  """

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="assoc_recall", segment_len=32, num_segments=3, num_keys=64, num_values=64,
        num_pairs=16, num_queries=16, num_filler=32,
        source="generator",      # or "tfds": array_record files read through tfds.data_source
        data_dir="", tfds_train_examples=20_000, tfds_eval_examples=2_000))

  @staticmethod
  def validate(c) -> None:
    root = ml_collections.ConfigDict({"task": c})
    if "source" in c:
      cfg.one_of(root, "task.source", ("generator", "tfds"))
      cfg.require(c.source != "tfds" or bool(c.data_dir), "task.data_dir",
                  "required when task.source='tfds'")
    cfg.positive(root, "task.segment_len", "task.num_segments", "task.num_keys",
                 "task.num_values", "task.num_pairs", "task.num_queries", "task.num_filler")
    cfg.require(c.num_segments >= 3, "task.num_segments",
                f"must be >= 3 so queries sit two segments after the pairs, got {c.num_segments}")
    cfg.require(2 * c.num_pairs <= c.segment_len, "task.num_pairs",
                f"2 * {c.num_pairs} pairs do not fit in segment_len={c.segment_len}")
    cfg.require(2 * c.num_queries <= c.segment_len, "task.num_queries",
                f"2 * {c.num_queries} queries do not fit in segment_len={c.segment_len}")
    cfg.require(c.num_queries <= c.num_pairs, "task.num_queries",
                f"{c.num_queries} queries but only {c.num_pairs} pairs")
    cfg.require(c.num_pairs <= c.num_keys, "task.num_pairs",
                f"{c.num_pairs} distinct keys needed, only num_keys={c.num_keys}")
    cfg.require(c.num_values >= 2, "task.num_values",
                f"must be >= 2 (train and held-out values per key), got {c.num_values}")

  def __init__(self, c):
    super().__init__(c)
    self.key0 = 1
    self.value0 = self.key0 + c.num_keys
    self.filler0 = self.value0 + c.num_values
    self.vocab_size = self.filler0 + c.num_filler
    self.chance = 1.0 / c.num_values
    self.max_answers = c.num_queries

  def dataset(self, split, seed):
    if self.c.get("source", "generator") != "tfds":
      return super().dataset(split, seed)
    from memjax.data import tfds_recall  # pylint: disable=g-import-not-at-top
    builder = tfds_recall.prepare(self, self.c.data_dir, seed=seed,
                                  num_train=self.c.tfds_train_examples,
                                  num_eval=self.c.tfds_eval_examples)
    src = tfds_recall.data_source(builder, "train" if split == "train" else "eval")
    return grain.MapDataset.source(src).repeat()

  def shuffled_baseline(self, batch) -> float:
    """What a reader that answers from the memory it is given scores when row b holds row b-1's
    memory (the yardstick's `shuffled`): right where that memory binds the asked key to the
    same value, wrong where it binds it to another, chance where it lacks the key. Above chance
    because held-out bindings leave each key only n_eval values to share."""
    inputs, answer = np.asarray(batch["inputs"]), np.asarray(batch["answer"])
    targets = np.asarray(batch["targets"])
    pairs = inputs[:, 1:1 + 2 * self.c.num_pairs]          # after the one leading filler token
    bound = [dict(zip(p[0::2].tolist(), p[1::2].tolist())) for p in pairs]
    scores = []
    for b, t in zip(*np.nonzero(answer)):
      other = bound[(b - 1) % len(bound)]
      key = int(inputs[b, t])
      scores.append(self.chance if key not in other else float(other[key] == targets[b, t]))
    return float(np.mean(scores))

  def example(self, rng, heldout):
    c, s = self.c, self.segment_len
    filler = lambda n: self.filler0 + rng.integers(0, c.num_filler, n)
    keys = rng.choice(c.num_keys, c.num_pairs, replace=False)
    values = np.array([heldout_lib.draw_value(rng, int(k), c.num_values, heldout) for k in keys])
    pairs = np.stack([self.key0 + keys, self.value0 + values], 1).reshape(-1)
    first = np.concatenate([pairs, filler(s - pairs.size)])
    q = rng.choice(c.num_pairs, c.num_queries, replace=False)
    queries = np.stack([self.key0 + keys[q], self.value0 + values[q]], 1).reshape(-1)
    last = np.concatenate([filler(s - queries.size), queries])
    middle = filler(s * (self.num_segments - 2))
    # One leading filler token: inputs are tokens[:-1], so the stream starts with it.
    tokens = np.concatenate([filler(1), first, middle, last])
    answer = np.zeros_like(tokens)
    value_pos = tokens.size - queries.size + 1 + 2 * np.arange(c.num_queries)
    answer[value_pos] = 1 + np.arange(c.num_queries)
    return self._stream(tokens, answer)


class Passkey(SyntheticTask):
  """A digit string near the start of a long filler stream, asked for at the end.

  Held out: a digit string is eval-only or train-only (a hash of the digits).
  """

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="passkey", segment_len=32, num_segments=4, digits=5, num_filler=32))

  @staticmethod
  def validate(c) -> None:
    root = ml_collections.ConfigDict({"task": c})
    cfg.positive(root, "task.segment_len", "task.num_segments", "task.digits", "task.num_filler")
    cfg.require(c.num_segments >= 3, "task.num_segments", f"must be >= 3, got {c.num_segments}")
    cfg.require(c.digits + 2 <= c.segment_len, "task.digits",
                f"passkey of {c.digits} digits does not fit in segment_len={c.segment_len}")

  PASS, ASK = 1, 2

  def __init__(self, c):
    super().__init__(c)
    self.digit0 = 3
    self.filler0 = self.digit0 + 10
    self.vocab_size = self.filler0 + c.num_filler
    self.chance = 0.1 ** c.digits
    self.max_answers = 1

  def example(self, rng, heldout):
    c, s = self.c, self.segment_len
    tokens = self.filler0 + rng.integers(0, c.num_filler, self.length + 1)
    digits = self.digit0 + heldout_lib.draw(rng, lambda r: r.integers(0, 10, c.digits),
                                            tuple, heldout, "passkey")
    start = 1 + rng.integers(0, s - c.digits - 1)         # inside the first segment
    tokens[start] = self.PASS
    tokens[start + 1: start + 1 + c.digits] = digits
    ask = tokens.size - c.digits - 1
    tokens[ask] = self.ASK
    tokens[ask + 1:] = digits
    answer = np.zeros_like(tokens)
    answer[ask + 1:] = 1
    return self._stream(tokens, answer)


class KVRecall(SyntheticTask):
  """Digit-first KV recall in a character vocabulary: turns `KEY05=8;`.

  Early segments hold `num_turns` turns with distinct two-digit keys; the last
  segment asks `KEYab=` for one of them and scores the value digit.
  Held out: a key -> value binding is eval-only or train-only (memjax.data.heldout: two of
  the ten digits per key are eval values).
  """

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="kv_recall", segment_len=64, num_segments=3, num_turns=8, num_queries=4))

  @staticmethod
  def validate(c) -> None:
    root = ml_collections.ConfigDict({"task": c})
    cfg.positive(root, "task.segment_len", "task.num_segments", "task.num_turns", "task.num_queries")
    cfg.require(c.num_segments >= 3, "task.num_segments", f"must be >= 3, got {c.num_segments}")
    cfg.require(KVRecall.TURN * c.num_turns <= c.segment_len, "task.num_turns",
                f"{c.num_turns} turns of {KVRecall.TURN} tokens exceed segment_len={c.segment_len}")
    cfg.require(KVRecall.TURN * c.num_queries <= c.segment_len, "task.num_queries",
                f"{c.num_queries} queries exceed segment_len={c.segment_len}")
    cfg.require(c.num_queries <= c.num_turns, "task.num_queries",
                f"{c.num_queries} queries but {c.num_turns} turns")

  CHARS = "_KEY=;0123456789."   # '_' pad, '.' filler
  TURN = 8                      # K E Y a b = v ;

  def __init__(self, c):
    super().__init__(c)
    self.vocab_size = len(self.CHARS)
    self.chance = 0.1
    self.max_answers = c.num_queries
    self.ids = {ch: i for i, ch in enumerate(self.CHARS)}

  def encode(self, text: str) -> np.ndarray:
    return np.array([self.ids[ch] for ch in text], np.int64)

  def example(self, rng, heldout):
    c, s = self.c, self.segment_len
    keys = rng.choice(100, c.num_turns, replace=False)
    values = np.array([heldout_lib.draw_value(rng, int(k), 10, heldout) for k in keys])
    turns = "".join(f"KEY{k:02d}={v};" for k, v in zip(keys, values))
    # Digit-first: the value digit follows `=` and nothing later repeats it.
    q = rng.choice(c.num_turns, c.num_queries, replace=False)
    ask = "".join(f"KEY{keys[i]:02d}={values[i]};" for i in q)
    head = (turns + "." * s)[:s]
    tail = ("." * s + ask)[-s:]
    text = "." + head + "." * (s * (self.num_segments - 2)) + tail
    tokens = self.encode(text)
    answer = np.zeros_like(tokens)
    starts = [tokens.size - len(ask) + j * self.TURN for j in range(c.num_queries)]
    for j, st in enumerate(starts):
      answer[st + 6] = j + 1   # K E Y a b = [v]
    return self._stream(tokens, answer)
