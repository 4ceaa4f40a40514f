"""Question-answer pairs for Dynamic Context Memory phase 1a.

Two sources of `QAExample`s:
  synthetic_qa(n, seed)          templated facts ("Mara's favourite colour is teal."), deterministic
                                 from the seed; runs offline, the default.
  squad_v2(n, split, data_dir)   SQuAD 2.0 through tensorflow-datasets (`tfds.data_source`,
                                 array_record files already prepared in `data_dir`); the
                                 unanswerable questions are skipped.

`exact_match` / `token_f1` are the SQuAD answer metrics (lowercase, no punctuation or articles).
"""
from __future__ import annotations

import dataclasses
import re
import string

import numpy as np


@dataclasses.dataclass(frozen=True)
class QAExample:
  id: str
  context: str     # the source text the content should stand for
  question: str
  answer: str


# --- synthetic facts ---------------------------------------------------------------------------

NAMES = ("Mara", "Tobias", "Ines", "Kofi", "Lena", "Ravi", "Sofia", "Jonas", "Amara", "Pavel",
         "Yuki", "Omar", "Clara", "Emeka", "Hana", "Luca", "Noor", "Felix", "Zara", "Mateo")

# attribute -> (fact template, question template, answers). Answers are single common words so a
# small model can emit them; `chance` is the mean of 1 / len(answers).
ATTRIBUTES = {
    "colour": ("{name}'s favourite colour is {value}.", "What is {name}'s favourite colour?",
               ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")),
    "city": ("{name} lives in {value}.", "Where does {name} live?",
             ("Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Rome", "Berlin", "Madrid")),
    "pet": ("{name} owns a {value}.", "What pet does {name} own?",
            ("cat", "dog", "parrot", "rabbit", "horse", "goldfish", "turtle", "hamster")),
    "job": ("{name} works as a {value}.", "What is {name}'s job?",
            ("doctor", "teacher", "pilot", "baker", "farmer", "lawyer", "painter", "nurse")),
    "fruit": ("{name}'s favourite fruit is the {value}.", "Which fruit does {name} like best?",
              ("apple", "banana", "mango", "cherry", "lemon", "peach", "grape", "pear")),
    "sport": ("{name} plays {value} every weekend.", "Which sport does {name} play?",
              ("tennis", "football", "chess", "golf", "hockey", "cricket", "rugby", "baseball")),
}

# A distractor fact about someone else precedes or follows the target fact, so the context holds
# more than the answer.
SYNTHETIC_CHANCE = float(np.mean([1.0 / len(a[2]) for a in ATTRIBUTES.values()]))


def synthetic_qa(n: int, seed: int = 0) -> list[QAExample]:
  """`n` templated fact/question/answer triples; the same `seed` gives the same list."""
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  rng = np.random.default_rng(seed)
  attrs = sorted(ATTRIBUTES)
  out = []
  for i in range(n):
    attr, other_attr = (attrs[j] for j in rng.choice(len(attrs), 2, replace=False))
    name, other = (NAMES[j] for j in rng.choice(len(NAMES), 2, replace=False))
    fact_t, question_t, values = ATTRIBUTES[attr]
    value = values[rng.integers(len(values))]
    o_fact_t, _, o_values = ATTRIBUTES[other_attr]
    distractor = o_fact_t.format(name=other, value=o_values[rng.integers(len(o_values))])
    fact = fact_t.format(name=name, value=value)
    context = f"{fact} {distractor}" if rng.integers(2) else f"{distractor} {fact}"
    out.append(QAExample(id=f"synthetic-{seed}-{i}", context=context,
                         question=question_t.format(name=name), answer=value))
  return out


# --- SQuAD 2.0 ---------------------------------------------------------------------------------

def _text(x) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, np.ndarray) and x.ndim == 0:
    return _text(x.item())
  return str(x)


def squad_v2(n: int, *, split: str = "validation", data_dir: str | None = None,
             seed: int = 0, field: str = "data.data_dir") -> list[QAExample]:
  """The first `n` answerable SQuAD 2.0 pairs of `split` after a seeded shuffle.

  Needs the dataset prepared as array_record in `data_dir` (tfds.data_source cannot download
  without tensorflow); raises ValueError naming `field` otherwise.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:  # pragma: no cover - it is in install_requires
    raise ValueError(f"{field}: SQuAD 2.0 needs tensorflow-datasets ({e})") from e
  try:
    source = tfds.data_source("squad/v2.0", split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types for a missing or non-array_record dataset
    where = data_dir or "the default tfds data dir (~/tensorflow_datasets)"
    raise ValueError(
        f"{field}: SQuAD 2.0 (squad/v2.0, split {split!r}) is not prepared as array_record in "
        f"{where}; prepare it with `tfds build squad/v2.0 --file_format=array_record "
        f"--data_dir=DIR` on a machine with tensorflow, or use data.source='synthetic' "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
  order = np.random.default_rng(seed).permutation(len(source))
  out = []
  for i in order:
    rec = source[int(i)]
    texts = rec["answers"]["text"]
    if bool(np.asarray(rec.get("is_impossible", False))) or len(texts) == 0:
      continue
    out.append(QAExample(id=_text(rec["id"]), context=_text(rec["context"]),
                         question=_text(rec["question"]), answer=_text(texts[0])))
    if len(out) == n:
      break
  if len(out) < n:
    raise ValueError(f"data.num_examples: asked for {n} answerable pairs, split {split!r} has "
                     f"{len(out)}")
  return out


def load(source: str, n: int, *, seed: int = 0, split: str = "validation",
         data_dir: str | None = None) -> list[QAExample]:
  if source == "synthetic":
    return synthetic_qa(n, seed)
  if source == "squad_v2":
    return squad_v2(n, split=split, data_dir=data_dir, seed=seed)
  raise ValueError(f"data.source: unknown value {source!r}; choose one of ['squad_v2', 'synthetic']")


def chance(source: str) -> float:
  """Accuracy of guessing the answer: uniform over an attribute's values; 0 for open answers."""
  return SYNTHETIC_CHANCE if source == "synthetic" else 0.0


# --- metrics -----------------------------------------------------------------------------------

def normalize_answer(s: str) -> str:
  """SQuAD's normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def exact_match(prediction: str, target: str) -> bool:
  return normalize_answer(prediction) == normalize_answer(target)


def token_f1(prediction: str, target: str) -> float:
  p, t = normalize_answer(prediction).split(), normalize_answer(target).split()
  if not p or not t:
    return float(p == t)
  common = {}
  for w in p:
    if w in t:
      common[w] = min(p.count(w), t.count(w))
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(p), same / len(t)
  return 2 * precision * recall / (precision + recall)
