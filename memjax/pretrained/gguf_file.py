"""Load a GGUF file: a fast metadata reader, `gguf` dequantization, tokenizer from metadata.

The `gguf` package's GGUFReader builds one numpy view per vocabulary string (~15 s for Gemma's
262k tokens on a 2-core CPU); the header is simple enough to parse directly (~0.5 s), and the
package's `gguf.quants.dequantize` still does the dequantization.
"""
from __future__ import annotations

import os
import struct

import gguf
import numpy as np

from memjax.pretrained import config as config_lib
from memjax.pretrained import tokenizer as tok_lib
from memjax.pretrained import weights
from memjax.pretrained.errors import ModelLoadError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
       6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


class _Truncated(Exception):
  pass


class GGUFFile:
  """Metadata dict and tensor table of a GGUF (v2/v3) file; tensors dequantized on demand."""

  def __init__(self, path: str):
    self.path = path
    self.size = os.path.getsize(path)
    with open(path, "rb") as f:
      buf = f.read(min(self.size, 64 << 20))  # headers are a few MB
    try:
      self._parse(buf)
    except _Truncated:
      if len(buf) < self.size:  # a huge header: read all of it
        with open(path, "rb") as f:
          buf = f.read()
        try:
          self._parse(buf)
          return
        except _Truncated:
          pass
      raise ModelLoadError(f"{path}: truncated GGUF file (header ends past the file's "
                           f"{self.size} bytes)") from None
    except (UnicodeDecodeError, struct.error, ValueError, KeyError) as e:
      raise ModelLoadError(f"{path}: unreadable GGUF header ({e})") from e

  def _parse(self, buf: bytes):
    pos = 0

    def take(n):
      nonlocal pos
      if pos + n > len(buf):
        raise _Truncated
      out = buf[pos:pos + n]
      pos += n
      return out

    def scalar(fmt):
      return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

    def string():
      return take(scalar("<Q")).decode("utf-8", errors="replace")

    def value(kind):
      if kind == _STRING:
        return string()
      if kind == _ARRAY:
        sub, n = scalar("<I"), scalar("<Q")
        if sub == _STRING:
          return [string() for _ in range(n)]
        if sub in _NP:
          return np.frombuffer(take(n * np.dtype(_NP[sub]).itemsize), _NP[sub]).copy()
        raise ValueError(f"array of value type {sub}")
      if kind in _SCALARS:
        return scalar(_SCALARS[kind])
      raise ValueError(f"value type {kind}")

    if len(buf) < 4:
      raise _Truncated
    if take(4) != b"GGUF":
      raise ModelLoadError(f"{self.path}: not a GGUF file (bad magic)")
    version = scalar("<I")
    if version not in (2, 3):
      raise ModelLoadError(f"{self.path}: GGUF version {version} is not supported (2, 3)")
    n_tensors, n_kv = scalar("<Q"), scalar("<Q")
    meta = {}
    for _ in range(n_kv):
      key = string()
      meta[key] = value(scalar("<I"))
    tensors = {}
    for _ in range(n_tensors):
      name = string()
      dims = [scalar("<Q") for _ in range(scalar("<I"))]
      qtype, offset = scalar("<I"), scalar("<Q")
      tensors[name] = (dims, qtype, offset)
    align = int(meta.get("general.alignment", 32))
    data_start = (pos + align - 1) // align * align
    self.meta, self.tensors, self.data_start = meta, tensors, data_start
    for name, (dims, qtype, offset) in tensors.items():
      end = data_start + offset + self._nbytes(name, dims, qtype)
      if end > self.size:
        raise ModelLoadError(f"{self.path}: truncated GGUF file (tensor {name!r} ends at byte "
                             f"{end}, file has {self.size})")
    self._mm = None

  def _nbytes(self, name, dims, qtype) -> int:
    try:
      block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
      raise ModelLoadError(f"{self.path}: tensor {name!r} has unknown GGML type {qtype}") from None
    n = int(np.prod(dims))
    return n // block * size

  def get(self, name: str) -> np.ndarray | None:
    """float32 array in the checkpoint's (PyTorch) layout: GGUF dims reversed."""
    if name not in self.tensors:
      return None
    dims, qtype, offset = self.tensors[name]
    if self._mm is None:
      self._mm = np.memmap(self.path, np.uint8, "r")
    qt = gguf.GGMLQuantizationType(qtype)
    block, size = gguf.GGML_QUANT_SIZES[qt]
    start = self.data_start + offset
    raw = self._mm[start:start + self._nbytes(name, dims, qtype)]
    shape = list(reversed(dims))
    raw = np.asarray(raw).reshape(shape[:-1] + [shape[-1] // block * size])
    if qt == gguf.GGMLQuantizationType.BF16:  # gguf returns these as float32 too
      out = gguf.quants.dequantize(raw, qt)
    else:
      try:
        out = gguf.quants.dequantize(raw, qt)
      except NotImplementedError as e:
        raise ModelLoadError(f"{self.path}: tensor {name!r}: {e}") from e
    return np.asarray(out, np.float32).reshape(shape)


_SUPPORTED = ("gemma3", "qwen2")

# llama.cpp tensor names -> HF names (per block); `ffn_norm` differs by arch.
_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
          "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
          "attn_k_norm": "self_attn.k_norm", "post_attention_norm": "post_attention_layernorm",
          "post_ffw_norm": "post_feedforward_layernorm", "ffn_gate": "mlp.gate_proj",
          "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def hf_to_gguf_names(config: config_lib.DecoderConfig) -> dict[str, str]:
  out = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
         "output_norm.weight", "lm_head.weight": "output.weight"}
  ffn_norm = ("pre_feedforward_layernorm" if config.post_norms else "post_attention_layernorm")
  for i in range(config.num_layers):
    for g, h in list(_BLOCK.items()) + [("ffn_norm", ffn_norm)]:
      for kind in ("weight", "bias"):
        out[f"model.layers.{i}.{h}.{kind}"] = f"blk.{i}.{g}.{kind}"
  return out


def config_from_gguf(f: GGUFFile) -> config_lib.DecoderConfig:
  m = f.meta
  arch = m.get("general.architecture")
  if arch not in _SUPPORTED:
    raise ModelLoadError(f"{f.path}: general.architecture {arch!r} is not supported "
                         f"(supported: {', '.join(_SUPPORTED)})")

  def need(key):
    k = f"{arch}.{key}"
    if k not in m:
      raise ModelLoadError(f"{f.path}: missing metadata field {k!r}")
    return m[k]

  def opt(key, default=None):
    return m.get(f"{arch}.{key}", default)

  emb = f.tensors.get("token_embd.weight")
  if emb is None:
    raise ModelLoadError(f"{f.path}: missing tensor 'token_embd.weight'")
  dim, heads = int(need("embedding_length")), int(need("attention.head_count"))
  num_layers = int(need("block_count"))
  head_dim = int(opt("attention.key_length", dim // heads))
  common = dict(
      vocab_size=int(emb[0][1]), dim=dim, num_layers=num_layers, num_heads=heads,
      num_kv_heads=int(opt("attention.head_count_kv", heads)), head_dim=head_dim,
      hidden=int(need("feed_forward_length")),
      norm_eps=float(opt("attention.layer_norm_rms_epsilon", 1e-6)),
      tie_embeddings="output.weight" not in f.tensors,
      bos_id=_int(m.get("tokenizer.ggml.bos_token_id")),
      eos_id=_int(m.get("tokenizer.ggml.eos_token_id")),
      pad_id=_int(m.get("tokenizer.ggml.padding_token_id")))
  scaling = opt("rope.scaling.type", "none")
  if scaling not in ("none", "linear"):
    raise ModelLoadError(f"{f.path}: {arch}.rope.scaling.type {scaling!r} is not supported")
  scale = float(opt("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
  theta = float(opt("rope.freq_base", 1_000_000.0 if arch == "gemma3" else 10_000.0))
  if arch == "qwen2":
    return config_lib.DecoderConfig(arch="qwen2", **common, rope_theta=theta,
                                    rope_local_theta=theta, rope_scale=scale,
                                    qkv_bias="blk.0.attn_q.bias" in f.tensors, act="silu")
  # gemma3: llama.cpp fixes the local RoPE base (10k) and the 5:1 sliding pattern in code.
  pattern = int(opt("attention.sliding_window_pattern", 6))
  # llama.cpp (and Gemma) scale queries by head_dim**-0.5, except 27B by (dim / heads)**-0.5.
  q_scalar = dim // heads if num_layers == 62 else head_dim
  return config_lib.DecoderConfig(
      arch="gemma3", **common, rope_theta=theta,
      rope_local_theta=float(opt("rope.freq_base_swa", 10_000.0)), rope_scale=scale,
      layer_types=config_lib.gemma3_layer_types(num_layers, pattern),
      sliding_window=int(opt("attention.sliding_window", 4096)), qk_norm=True,
      norm_plus_one=True, post_norms=True, act="gelu_tanh", embed_scale=True,
      attn_scale=float(q_scalar) ** -0.5,
      final_logit_softcap=opt("final_logit_softcapping"))


def _int(x):
  return None if x is None else int(x)


def load_tokenizer(f: GGUFFile, cache: str | None = None) -> tok_lib.Tokenizer:
  """The tokenizer from the file's metadata; the rebuilt tokenizer.json is cached under `cache`
  (keyed by the file's name, size and mtime) because deriving Gemma's merges takes ~10 s."""
  tok = None
  if cache:
    st = os.stat(f.path)
    key = f"{os.path.basename(f.path)}-{st.st_size}-{st.st_mtime_ns}.tokenizer.json"
    cached = os.path.join(cache, "tokenizers", key)
    if os.path.exists(cached):
      try:
        tok = tok_lib.from_gguf_metadata(f.meta, f.path, backend=cached)
      except Exception:  # a stale or partial cache entry: rebuild it
        tok = None
  if tok is None:
    tok = tok_lib.from_gguf_metadata(f.meta, f.path)
    if cache:
      os.makedirs(os.path.dirname(cached), exist_ok=True)
      tmp = f"{cached}.{os.getpid()}.tmp"
      tok.backend.save(tmp)
      os.replace(tmp, cached)
  return tok


def load_gguf(path: str, *, dtype, cache: str | None = None):
  """(Decoder, Tokenizer, DecoderConfig) from a GGUF file."""
  if not os.path.isfile(path):
    raise ModelLoadError(f"{path}: no such GGUF file")
  f = GGUFFile(path)
  config = config_from_gguf(f)
  tokenizer = load_tokenizer(f, cache)
  tok_lib.check_fits(tokenizer, config.vocab_size, path,
                     "rows of token_embd.weight")
  names = hf_to_gguf_names(config)
  gemma = config.arch == "gemma3"

  def get(name):
    arr = f.get(names[name])
    if arr is not None and gemma and name.endswith("norm.weight"):
      arr = arr - 1.0  # llama.cpp stores Gemma's (1 + w) norm scales with the one added
    return arr

  model = weights.build(config, get, dtype=dtype, where=path)
  return model, tokenizer, config
