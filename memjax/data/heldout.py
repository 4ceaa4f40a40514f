"""Held-out evaluation by construction: the eval splits draw from a part of the problem space
that training never touches.

Two ways, chosen per task by what identifies an example (or the fact it asks for):
  bindings   a key -> value binding is an eval binding when the value is among the first
             n_eval(V) of a key-seeded permutation of the V values; every key keeps exactly
             n_eval(V) eval values and V - n_eval(V) train values, so an eval example asks
             only for bindings no training example contains. A random subset per key, not an
             arc: with arcs, keys of nearby offsets share held-out values, and a model that
             reads memory by key similarity turns a shuffled memory into a partial answer.
  whole      an example whose identity (a tuple of ints) hashes below FRACTION is eval-only;
             a split draws until it gets one of its own (`draw`).
A fixed salt makes the partition the same on every machine and for every seed: changing the
seed changes the examples, never which part of the space they come from.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np

FRACTION = 0.25          # share of the problem space kept for evaluation
_SALT = b"memjax-heldout"
_TRIES = 10_000


def is_eval_split(split: str) -> bool:
  """Every split but "train" (eval, test, adversarial) draws from the held-out part."""
  return split != "train"


def unit(*parts: int) -> float:
  """A stable hash of integers in [0, 1) (not Python's hash(): that one is salted per process)."""
  data = np.asarray(parts, np.int64).tobytes()
  h = hashlib.blake2b(data, digest_size=8, key=_SALT).digest()
  return int.from_bytes(h, "little") / 2.0 ** 64


def in_eval(*parts: int) -> bool:
  """Whether the example identified by `parts` belongs to the held-out part ("whole")."""
  return unit(*parts) < FRACTION


def n_eval(num_values: int) -> int:
  """Eval values per key ("bindings"): at least one, and at least one left for training."""
  if num_values < 2:
    raise ValueError(f"a held-out binding split needs >= 2 values per key, got {num_values}")
  return min(max(1, int(num_values * FRACTION)), num_values - 1)


@functools.lru_cache(maxsize=1 << 16)
def _order(key: tuple, num_values: int) -> np.ndarray:
  """The key's values, eval ones first (seeded by the salted hash: the same on every machine)."""
  return np.random.default_rng(int(unit(*key) * 2.0 ** 63)).permutation(num_values)


def binding_is_eval(key, value: int, num_values: int) -> bool:
  """Whether the binding key -> value is held out (key: an int or a tuple of ints)."""
  key = key if isinstance(key, tuple) else (key,)
  return value in _order(key, num_values)[:n_eval(num_values)]


def draw_value(rng: np.random.Generator, key, num_values: int, heldout: bool) -> int:
  """A value for `key`, uniform over the values of its split's bindings."""
  key = key if isinstance(key, tuple) else (key,)
  k = n_eval(num_values)
  r = int(rng.integers(0, k)) if heldout else int(rng.integers(k, num_values))
  return int(_order(key, num_values)[r])


def draw(rng: np.random.Generator, make, identity, heldout: bool, what: str = "example"):
  """Calls make(rng) until identity(result) lies in the split's part of the space ("whole")."""
  for _ in range(_TRIES):
    out = make(rng)
    if in_eval(*identity(out)) == heldout:
      return out
  split = "eval" if heldout else "train"
  raise ValueError(f"no {what} of the {split} part in {_TRIES} draws: the problem space is "
                   f"too small for a held-out split of {FRACTION:.0%}")
