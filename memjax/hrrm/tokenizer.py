"""The HRRM tokenizer: byte-level BPE (Hugging Face `tokenizers`) with the control and
thought tokens as single, never-split special tokens.
"""
from __future__ import annotations

import os
from typing import Iterable

from memjax.hrrm.tasks import SPECIAL_TOKENS


class TokenizerError(ValueError):
  """A tokenizer file is unusable for HRRM (missing, unreadable, special tokens absent)."""


def train(texts: Iterable[str], vocab_size: int = 32000, min_frequency: int = 2):
  """A byte-level BPE trained on `texts`; SPECIAL_TOKENS get ids 0.. in order."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  if vocab_size < len(SPECIAL_TOKENS) + 256:
    raise TokenizerError(f"vocab_size: {vocab_size} is below the {len(SPECIAL_TOKENS)} special "
                         f"tokens plus 256 bytes")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  return tok


def load(path: str):
  """Loads tokenizer.json; a clear TokenizerError if it is missing or lacks a special token."""
  from tokenizers import Tokenizer
  if not os.path.isfile(path):
    raise TokenizerError(f"{path}: no such tokenizer file")
  try:
    tok = Tokenizer.from_file(path)
  except Exception as e:  # tokenizers raises its own Exception type
    raise TokenizerError(f"{path}: not a tokenizers JSON file ({str(e).splitlines()[0]})") from e
  check(tok, path)
  return tok


def check(tok, name: str = "tokenizer") -> None:
  missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
  if missing:
    raise TokenizerError(f"{name}: missing special tokens {missing}; rebuild it with "
                         f"experiments/build_tokenizer.py")
  added = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
  split = [t for t in SPECIAL_TOKENS if t not in added]
  if split:
    raise TokenizerError(f"{name}: tokens {split} are in the vocabulary but not registered as "
                         f"special (they would be split)")


def word_level(words):
  """A word-level tokenizer for a synthetic task's vocabulary (`task.words`, ids = positions).

  The tiny CPU models are trained on task vocabularies, not the BPE: exporting one of them
  with this tokenizer keeps tokenizer.json consistent with its embedding rows.
  """
  from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
  vocab = {w: i for i, w in enumerate(words)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS if t in vocab])
  check(tok, "task vocabulary")
  return tok
