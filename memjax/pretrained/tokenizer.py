"""A thin tokenizer over the `tokenizers` library: built from tokenizer.json or GGUF metadata."""
from __future__ import annotations

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from memjax.pretrained.errors import ModelLoadError


class Tokenizer:
  """encode(text) -> ids (no special tokens added unless asked), decode(ids) -> text.

  `add_bos` says whether the model expects `bos_id` at the start of a sequence (Gemma does,
  Qwen2 does not); `encode(text, add_bos=True)` prepends it when the model has one.
  """

  def __init__(self, backend: tokenizers.Tokenizer, *, bos_id: int | None, eos_id: int | None,
               pad_id: int | None = None, add_bos: bool = False, source: str = ""):
    self.backend = backend
    self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
    self.add_bos = add_bos and bos_id is not None
    self.source = source

  @property
  def vocab_size(self) -> int:
    """Number of ids the tokenizer can produce (largest id + 1, added tokens included)."""
    n = self.backend.get_vocab_size(with_added_tokens=True)
    if getattr(self, "_vocab_size_key", None) != n:  # recomputed only if tokens were added
      self._vocab_size_key = n
      self._vocab_size = max(self.backend.get_vocab(with_added_tokens=True).values(),
                             default=-1) + 1
    return self._vocab_size

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    ids = self.backend.encode(text, add_special_tokens=False).ids
    if add_bos and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self.backend.token_to_id(token)

  def __repr__(self):
    return (f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
            f"source={self.source!r})")


def check_fits(tokenizer: Tokenizer, vocab_size: int, where: str, model_where: str):
  """A tokenizer that can emit ids the model has no embedding for is the wrong tokenizer."""
  base = tokenizer.backend.get_vocab_size(with_added_tokens=False)
  if base > vocab_size:
    raise ModelLoadError(f"{where}: tokenizer has {base} tokens but the model's vocab_size is "
                         f"{vocab_size} ({model_where}): tokenizer and model do not match")
  for name in ("bos_id", "eos_id"):
    i = getattr(tokenizer, name)
    if i is not None and not 0 <= i < vocab_size:
      raise ModelLoadError(f"{where}: {name} {i} is outside the model's vocabulary of {vocab_size}")


# --- GGUF metadata -> tokenizers.Tokenizer -------------------------------------------------

_CONTROL, _USER_DEFINED = 3, 4
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _bytes_to_unicode() -> dict[int, str]:
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _merges_from_vocab(tokens: list[str]) -> list[tuple[str, str]]:
  """SentencePiece-BPE merges implied by a vocabulary whose order is the merge order.

  Every token that splits into two vocabulary pieces gives a merge; merges are ranked by the
  merged token's index (earlier first), ties by longer left then longer right piece -- the
  ranking transformers uses for Gemma GGUF files, so both tokenize alike.
  """
  vocab = {t: i for i, t in enumerate(tokens)}  # a repeated token keeps its last id
  merges = []
  for tok, idx in vocab.items():
    local = []
    for j in range(1, len(tok)):
      left, right = tok[:j], tok[j:]
      li, ri = vocab.get(left), vocab.get(right)
      if li is not None and ri is not None:
        local.append((li, ri, left, right))
    local.sort()
    merges.extend((idx, -len(l), -len(r), l, r) for _, _, l, r in local)
  merges.sort(key=lambda m: m[:3])  # stable: equal keys keep the per-token (li, ri) order
  return [(l, r) for *_, l, r in merges]


def _add_special(backend: tokenizers.Tokenizer, tokens, token_types):
  if token_types is None:
    return
  control = [AddedToken(t, normalized=False, special=True)
             for t, k in zip(tokens, token_types) if k == _CONTROL]
  user = [AddedToken(t, normalized=False, special=False)
          for t, k in zip(tokens, token_types) if k == _USER_DEFINED]
  if control:
    backend.add_special_tokens(control)
  if user:
    backend.add_tokens(user)


def from_gguf_metadata(meta: dict, where: str, backend: str | None = None) -> Tokenizer:
  """Rebuild the tokenizer a GGUF file describes (SentencePiece-BPE 'llama' or byte-level 'gpt2').

  `backend`: a tokenizer.json saved from an earlier rebuild of the same file, used as is.
  """
  kind = meta.get("tokenizer.ggml.model")
  tokens = meta.get("tokenizer.ggml.tokens")
  if kind is None or tokens is None:
    raise ModelLoadError(f"{where}: no tokenizer in the GGUF metadata (tokenizer.ggml.model/tokens)")
  tokens = list(tokens)
  types = meta.get("tokenizer.ggml.token_type")
  types = None if types is None else [int(x) for x in types]
  arch = meta.get("general.architecture")
  cached = backend is not None
  if cached:
    backend = tokenizers.Tokenizer.from_file(backend)
    add_bos_default = kind == "llama"
  elif kind == "llama":
    if arch in ("gemma", "gemma2", "gemma3"):  # runs of spaces are stored as real spaces
      tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
    merges = meta.get("tokenizer.ggml.merges")
    merges = ([tuple(m.split(" ")) for m in merges] if merges is not None
              else _merges_from_vocab(tokens))
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    backend = tokenizers.Tokenizer(models.BPE(
        vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=True,
        unk_token=None if unk is None else tokens[int(unk)], byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    if arch not in ("gemma", "gemma2", "gemma3") and meta.get("tokenizer.ggml.add_space_prefix",
                                                                 True):
      backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                                 normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse()])
    add_bos_default = True
  elif kind == "gpt2":
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {}
    for i, t in enumerate(tokens):
      key = t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))
      vocab.setdefault(key, i)
    merges = meta.get("tokenizer.ggml.merges")
    if merges is None:
      raise ModelLoadError(f"{where}: tokenizer.ggml.merges missing for a gpt2 tokenizer")
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab,
                                              merges=[tuple(m.split(" ")) for m in merges]))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel: skip it.
    types = None if types is None else [
        k if (k != _CONTROL or set(t) <= alphabet) else 1 for t, k in zip(tokens, types)]
    add_bos_default = False
  else:
    raise ModelLoadError(f"{where}: tokenizer.ggml.model {kind!r} is not supported "
                         f"(supported: llama, gpt2)")
  if not cached:
    _add_special(backend, tokens, types)

  def opt(key):
    v = meta.get(key)
    return None if v is None else int(v)
  return Tokenizer(backend, bos_id=opt("tokenizer.ggml.bos_token_id"),
                   eos_id=opt("tokenizer.ggml.eos_token_id"),
                   pad_id=opt("tokenizer.ggml.padding_token_id"),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)),
                   source=where)


def from_tokenizer_json(path: str, *, bos_id=None, eos_id=None, pad_id=None,
                        add_bos: bool = False) -> Tokenizer:
  try:
    backend = tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # tokenizers raises a bare Exception for unreadable JSON
    raise ModelLoadError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from e
  return Tokenizer(backend, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, add_bos=add_bos,
                   source=path)
