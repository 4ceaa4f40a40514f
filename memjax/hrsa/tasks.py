"""HRSA retrieval: key -> value facts buried in a long document, asked about after it.

A document of `doc_len` tokens is Markov "text" (next = perm[cur] with prob `text_p`)
with facts `[FACT, ka, kb, value]` written into distinct `chunk`-token chunks. The
decoder sees only the document's last `tail` tokens, then `[QUERY, ka, kb, ANS]`, and
must emit `value`. The asked-for fact never lies in the tail, so it is out of the
decoder's reach: only the memory built from the document can hold it.

Adversarial distractors share `ka` with the asked-for fact and differ in `kb`
(near-identical keys); they may sit in the tail, tempting a decoder that copies
from its local context. Ordinary distractors have unrelated keys.

Batches mix LM examples (predict the document's continuation from the tail, every
position scored) and retrieval examples (only the answer scored) at
`retrieval_fraction` (0.2 by default: 80% LM / 20% retrieval).

Mix warm-up (train split; off by default): for the first `retrieval_warmup_steps` steps a
train example is a retrieval example with probability `retrieval_warmup_fraction` (1.0 by
default: retrieval only) instead of `retrieval_fraction`, so the memory pathway can be
learned before LM examples dominate the batch. The same single draw decides it, so with the
warm-up off (0 steps) the batches are unchanged draw for draw.

Curriculum (train split, by batch index = step): `easy` until `curriculum_steps[0]`
(target fact in the last quarter, `easy_distractors`, no adversarial keys), `target`
until `curriculum_steps[1]`, then `hard` (more distractors, two adversarial). The
`eval` split is all retrieval at the target stage; `adversarial` is the same with at
least one adversarial distractor in every example.

Bypass regime (issue 14; all off by default, so the task above is unchanged draw for draw):
  inside_fraction   the asked-for fact lies, with this probability, in a chunk of the tail
                    (inside the decoder's local context, where copying is a legitimate
                    shortcut); otherwise before it, as above. Splits `eval_inside` and
                    `eval_beyond` hold only one kind; `eval` and `adversarial` keep the mix.
  adversarial_in_tail  adversarial distractors (same `ka`) are written into tail chunks,
                    next to the query: a decoder that copies the nearest look-alike loses
                    (ordinary distractors then never share `ka`).
  lm_after_doc      an LM example's decoder window is the `tail + 4` tokens that follow the
                    document (every position scored), so nothing it predicts lies in the
                    memory (by default the window overlaps the document's end, whose tokens
                    the memory holds: the LM targets of the tail leak through it).
  copy_p, copy_len, copy_max   copy structure in the text: at each position, with
                    probability `copy_p`, the next `copy_len` tokens repeat the span that
                    started d tokens back, d uniform in [copy_len, copy_max]: a long local
                    context predicts the text better than the last token does.
  length_curriculum  ((from_step, tokens), ...), off when empty: a train document of that
                    step has `tokens` tokens of text and facts, left-padded with PAD to
                    `doc_len`, so the slot count stays the model's while the share of slots
                    that hold anything grows; the tail, the asked-for fact and every
                    distractor lie in the active part. Eval splits use the whole document.
Split `eval_lm` holds LM examples of held-out documents (the LM loss comparison).

Held out: a fact's binding (ka, kb) -> value is eval-only or train-only
(memjax.data.heldout: a quarter of the values per key pair are eval values). Every fact of a
training document (LM or retrieval, target or distractor) uses a training binding, every
fact of an `eval` or `adversarial` document a held-out one: no fact an eval example holds or
asks for occurs anywhere in training.
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np

from memjax.core.config import ConfigError
from memjax.data import heldout as heldout_lib

PAD, BOS, FACT, QUERY, ANS = 0, 1, 2, 3, 4
NUM_SPECIAL = 5
SPLITS = ("train", "eval", "adversarial", "eval_inside", "eval_beyond", "eval_lm")
STAGES = ("easy", "target", "hard")


@dataclasses.dataclass(frozen=True)
class Stage:
  distractors: int
  adversarial: int          # adversarial distractors (each with prob adversarial_p, or always)
  near_quarter: bool        # target fact within the last quarter of the document


class HRSARetrievalTask:
  """Task contract: vocab_size, chance, batches(split, batch_size, seed)."""

  def __init__(self, config):
    c = dict(config)
    self.doc_len = int(c.get("doc_len", 256))
    self.chunk = int(c.get("chunk", 16))
    self.tail = int(c.get("tail", 16))
    self.n_ka = int(c.get("n_ka", 16))
    self.n_kb = int(c.get("n_kb", 16))
    self.n_values = int(c.get("n_values", 32))
    self.n_text = int(c.get("n_text", 32))
    self.text_p = float(c.get("text_p", 0.9))
    self.retrieval_fraction = float(c.get("retrieval_fraction", 0.2))
    self.retrieval_warmup_steps = int(c.get("retrieval_warmup_steps", 0))
    self.retrieval_warmup_fraction = float(c.get("retrieval_warmup_fraction", 1.0))
    self.curriculum_steps = tuple(int(s) for s in c.get("curriculum_steps", (200, 2000)))
    self.easy_distractors = int(c.get("easy_distractors", 2))
    self.target_distractors = int(c.get("target_distractors", 6))
    self.hard_distractors = int(c.get("hard_distractors", 10))
    self.adversarial_p = float(c.get("adversarial_p", 0.5))
    self.inside_fraction = float(c.get("inside_fraction", 0.0))
    self.adversarial_in_tail = bool(c.get("adversarial_in_tail", False))
    self.lm_after_doc = bool(c.get("lm_after_doc", False))
    self.copy_p = float(c.get("copy_p", 0.0))
    self.copy_len = int(c.get("copy_len", 8))
    self.copy_max = int(c.get("copy_max", 64))
    self.length_curriculum = tuple((int(a), int(n)) for a, n in c.get("length_curriculum", ()))
    self._check()
    self.ka0 = NUM_SPECIAL
    self.kb0 = self.ka0 + self.n_ka
    self.v0 = self.kb0 + self.n_kb
    self.t0 = self.v0 + self.n_values
    used = self.t0 + self.n_text
    self.vocab_size = int(c.get("vocab_size", -(-used // 32) * 32))
    if self.vocab_size < used:
      raise ConfigError(f"task.vocab_size: {self.vocab_size} < {used} tokens the task uses")
    self.chance = 1.0 / self.n_values
    self.seq_len = self.tail + 4
    self.perm = np.random.default_rng(1234).permutation(self.n_text)
    self.stages = {
        "easy": Stage(self.easy_distractors, 0, True),
        "target": Stage(self.target_distractors, 1, False),
        "hard": Stage(self.hard_distractors, 2, False),
    }

  @staticmethod
  def validate(task_config) -> None:
    """Raises ConfigError naming the field (called by the loop before anything compiles)."""
    HRSARetrievalTask(task_config)

  def _check(self):
    if self.chunk < 4:
      raise ConfigError(f"task.chunk: must be >= 4 (a fact is 4 tokens), got {self.chunk}")
    if self.doc_len % self.chunk:
      raise ConfigError(f"task.doc_len: {self.doc_len} is not a multiple of task.chunk {self.chunk}")
    if self.tail % self.chunk or self.tail >= self.doc_len // 2:
      raise ConfigError(f"task.tail: must be a multiple of chunk below doc_len/2, got {self.tail}")
    self._check_length(self.doc_len, "task.doc_len")
    steps = [a for a, _ in self.length_curriculum]
    if steps and (steps[0] != 0 or steps != sorted(set(steps))):
      raise ConfigError(f"task.length_curriculum: steps must start at 0 and increase, got {steps}")
    for _, n in self.length_curriculum:
      if not 0 < n <= self.doc_len or n % self.chunk:
        raise ConfigError(f"task.length_curriculum: {n} tokens is not a multiple of chunk "
                          f"{self.chunk} in (0, doc_len={self.doc_len}]")
      self._check_length(n, "task.length_curriculum")
    if self.n_values < 2:
      raise ConfigError(f"task.n_values: must be >= 2 (train and held-out values per key), got "
                        f"{self.n_values}")
    for name in ("retrieval_fraction", "retrieval_warmup_fraction", "inside_fraction"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ConfigError(f"task.{name}: must lie in [0, 1], got {getattr(self, name)}")
    if self.retrieval_warmup_steps < 0:
      raise ConfigError(f"task.retrieval_warmup_steps: must be >= 0, got "
                        f"{self.retrieval_warmup_steps}")
    tail_chunks = self.tail // self.chunk
    if self.adversarial_in_tail and self.hard_distractors and tail_chunks < 3:
      raise ConfigError(f"task.tail: adversarial_in_tail needs >= 3 tail chunks (target and two "
                        f"adversarial distractors), got {tail_chunks}")
    if self.adversarial_in_tail and self.n_ka < 2:
      raise ConfigError(f"task.n_ka: adversarial_in_tail needs >= 2 first keys, got {self.n_ka}")
    if not 0.0 <= self.copy_p < 1.0:
      raise ConfigError(f"task.copy_p: must lie in [0, 1), got {self.copy_p}")
    if self.copy_p and not 1 <= self.copy_len <= self.copy_max:
      raise ConfigError(f"task.copy_max: must be >= copy_len >= 1, got copy_len={self.copy_len} "
                        f"copy_max={self.copy_max}")

  def _check_length(self, n: int, field: str):
    """A document of n active tokens holds the tail and every stage's facts."""
    if self.tail >= n // 2:
      raise ConfigError(f"{field}: {n} tokens leave no room before a {self.tail}-token tail "
                        f"(task.tail must be below half of it)")
    for name in ("easy_distractors", "target_distractors", "hard_distractors"):
      if getattr(self, name) + 1 > n // self.chunk - 1:
        raise ConfigError(f"task.{name}: {getattr(self, name)} distractors do not fit in "
                          f"{n // self.chunk} chunks of a {n}-token document ({field})")

  def active_len_at(self, step: int) -> int:
    """Tokens of text and facts in a train document of this step (the rest is PAD)."""
    n = self.doc_len
    for start, tokens in self.length_curriculum:
      if step >= start:
        n = tokens
    return n

  def stage_at(self, step: int) -> str:
    if step < self.curriculum_steps[0]:
      return "easy"
    return "target" if step < self.curriculum_steps[1] else "hard"

  def retrieval_fraction_at(self, step: int) -> float:
    """The probability that a train example of this step is a retrieval example."""
    if step < self.retrieval_warmup_steps:
      return self.retrieval_warmup_fraction
    return self.retrieval_fraction

  # -- generation ---------------------------------------------------------------------------

  def _text(self, rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.empty(n, np.int64)
    cur = rng.integers(self.n_text)
    jumps = rng.random(n) > self.text_p
    rand = rng.integers(self.n_text, size=n)
    if self.copy_p:   # drawn only when on: the default stream stays draw for draw as before
      starts = rng.random(n) < self.copy_p
      backs = rng.integers(self.copy_len, self.copy_max + 1, size=n)
    left = back = 0
    for i in range(n):
      if left == 0 and self.copy_p and starts[i] and i >= backs[i]:
        left, back = self.copy_len, int(backs[i])
      if left:
        cur = out[i - back]
        left -= 1
      else:
        cur = rand[i] if jumps[i] else self.perm[cur]
      out[i] = cur
    return out + self.t0

  def value(self, rng: np.random.Generator, ka: int, kb: int, heldout: bool) -> int:
    return heldout_lib.draw_value(rng, (ka, kb), self.n_values, heldout)

  def example(self, rng: np.random.Generator, stage: str, retrieval: bool,
              force_adversarial: bool = False, heldout: bool = False,
              inside: bool | None = None, active: int | None = None) -> dict:
    """`inside`: put the asked-for fact in the tail (True) or before it (False); None draws
    it with probability `inside_fraction` (no draw at all when that is 0). `active`: tokens
    of text and facts, left-padded with PAD to doc_len (None: the whole document)."""
    st = self.stages[stage]
    n = self.doc_len if active is None else active
    c, tail = self.chunk, self.tail
    stream = self._text(rng, n + self.seq_len + 1)
    doc = stream[:n].copy()
    n_chunks = n // c
    free_chunks = (n - tail) // c               # chunks wholly before the tail
    if inside is None:
      inside = bool(self.inside_fraction) and bool(rng.random() < self.inside_fraction)
    if inside:
      tgt_chunk = int(rng.integers(free_chunks, n_chunks))
    else:
      lo = free_chunks - max(1, free_chunks // 4) if st.near_quarter else 0
      tgt_chunk = int(rng.integers(lo, free_chunks))
    ka, kb = int(rng.integers(self.n_ka)), int(rng.integers(self.n_kb))
    value = self.value(rng, ka, kb, heldout)
    n_adv = st.adversarial if force_adversarial else int(
        (rng.random(st.adversarial) < self.adversarial_p).sum())
    if force_adversarial:
      n_adv = max(n_adv, 1)
    others = [ch for ch in range(n_chunks) if ch != tgt_chunk]
    if self.adversarial_in_tail:   # the look-alikes sit next to the query
      tail_free = [ch for ch in range(free_chunks, n_chunks) if ch != tgt_chunk]
      adv_chunks = [int(ch) for ch in rng.permutation(tail_free)[:n_adv]]
      n_adv = len(adv_chunks)
      rest = [ch for ch in others if ch not in adv_chunks]
      chunks = adv_chunks + [int(ch) for ch in rng.permutation(rest)[:st.distractors - n_adv]]
    else:
      chunks = rng.permutation(others)[:st.distractors]
    used_keys = {(ka, kb)}
    facts = [(tgt_chunk, ka, kb, value)]
    for i, ch in enumerate(chunks):
      while True:
        if i < n_adv:
          k = (ka, int(rng.integers(self.n_kb)))
        else:
          k = (int(rng.integers(self.n_ka)), int(rng.integers(self.n_kb)))
        # With the look-alikes placed in the tail, no ordinary distractor shares ka by
        # chance: every same-ka fact is then an adversarial one, inside the local context.
        if k not in used_keys and (i < n_adv or not self.adversarial_in_tail or k[0] != ka):
          break
      used_keys.add(k)
      facts.append((int(ch), k[0], k[1], self.value(rng, k[0], k[1], heldout)))
    src = -1
    for j, (ch, a, b, v) in enumerate(facts):
      off = ch * c + int(rng.integers(c - 3))
      doc[off:off + 4] = (FACT, self.ka0 + a, self.kb0 + b, self.v0 + v)
      if j == 0:
        src = off
    l = self.seq_len
    if retrieval:
      tokens = np.concatenate([doc[n - tail:], [QUERY, self.ka0 + ka, self.kb0 + kb, ANS]])
      targets = np.zeros(l, np.int64)
      targets[-1] = self.v0 + value
      weights = np.zeros(l, np.float32)
      weights[-1] = 1.0
    else:
      full = np.concatenate([doc, stream[n:]])
      start = n if self.lm_after_doc else n - tail
      tokens = full[start:start + l]
      targets = full[start + 1:start + l + 1]
      weights = np.ones(l, np.float32)
    pad = self.doc_len - n
    if pad:
      doc = np.concatenate([np.full(pad, PAD, doc.dtype), doc])
      src += pad
    return dict(doc=doc.astype(np.int32), tokens=tokens.astype(np.int32),
                targets=targets.astype(np.int32), weights=weights,
                is_retrieval=np.bool_(retrieval), answer=np.int32(self.v0 + value),
                src_start=np.int32(src if retrieval else -1),
                adversarial=np.bool_(retrieval and n_adv > 0),
                inside=np.bool_(retrieval and inside))

  def batches(self, split: str, batch_size: int, seed: int):
    """An endless grain IterDataset of dict batches (resumable via get_state/set_state)."""
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    split_id = SPLITS.index(split)

    def make(index):
      rng = np.random.default_rng((seed, split_id, int(index)))
      if split == "train":
        step = int(index) // batch_size
        stage = self.stage_at(step)
        retrieval = bool(rng.random() < self.retrieval_fraction_at(step))
        return self.example(rng, stage, retrieval, active=self.active_len_at(step))
      if split == "eval_lm":
        return self.example(rng, "target", False, heldout=True)
      inside = {"eval_inside": True, "eval_beyond": False}.get(split)
      return self.example(rng, "target", True, force_adversarial=split == "adversarial",
                          heldout=True, inside=inside)

    ds = grain.MapDataset.range(10 ** 12).map(make).batch(batch_size, drop_remainder=True)
    return ds.to_iter_dataset()
