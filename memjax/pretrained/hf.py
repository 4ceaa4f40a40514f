"""Load a local Hugging Face folder: config.json, *.safetensors (sharded or not), tokenizer.json."""
from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from memjax.pretrained import config as config_lib
from memjax.pretrained import tokenizer as tok_lib
from memjax.pretrained import weights
from memjax.pretrained.errors import ModelLoadError

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
           "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsFile:
  """Memory-mapped safetensors file; checks the header against the file's size."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise ModelLoadError(f"{path}: truncated safetensors file ({size} bytes, no header)")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise ModelLoadError(f"{path}: truncated safetensors file (header of {n} bytes, "
                             f"file of {size})")
      try:
        header = json.loads(f.read(n))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: not a safetensors file (unreadable header: {e})") from e
    header.pop("__metadata__", None)
    self.base = 8 + n
    end = max((info["data_offsets"][1] for info in header.values()), default=0)
    if self.base + end > size:
      raise ModelLoadError(f"{path}: truncated safetensors file (header says "
                           f"{self.base + end} bytes, file has {size})")
    self.header = header
    self._mm = np.memmap(path, np.uint8, "r") if size > 0 else None

  def names(self):
    return self.header.keys()

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    if info["dtype"] not in _DTYPES:
      raise ModelLoadError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    s, e = info["data_offsets"]
    return self._mm[self.base + s:self.base + e].view(_DTYPES[info["dtype"]]).reshape(
        info["shape"])


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ModelLoadError(f"{path}: not valid JSON ({e})") from e


def open_weights(folder: str) -> dict[str, SafetensorsFile]:
  """canonical tensor name -> the file that holds it."""
  index_path = os.path.join(folder, "model.safetensors.index.json")
  if os.path.exists(index_path):
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ModelLoadError(f"{index_path}: no weight_map")
    shards = {}
    for fname in sorted(set(weight_map.values())):
      p = os.path.join(folder, fname)
      if not os.path.exists(p):
        raise ModelLoadError(f"{index_path}: shard {fname} is missing from {folder}")
      shards[fname] = SafetensorsFile(p)
    where = {}
    for name, fname in weight_map.items():
      if name not in shards[fname].header:
        raise ModelLoadError(f"{os.path.join(folder, fname)}: missing tensor {name!r} "
                             f"(listed in model.safetensors.index.json)")
      where[weights.canonical(name)] = shards[fname]
    return where
  files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
  if not files:
    raise ModelLoadError(f"{folder}: no *.safetensors weights (and no "
                         f"model.safetensors.index.json)")
  where = {}
  for fname in files:
    st = SafetensorsFile(os.path.join(folder, fname))
    for name in st.names():
      where[weights.canonical(name)] = st
  return where


def load_folder(folder: str, *, dtype):
  """(Decoder, Tokenizer, DecoderConfig) from a local HF folder."""
  if not os.path.isdir(folder):
    raise ModelLoadError(f"{folder}: no such model folder")
  cfg_path = os.path.join(folder, "config.json")
  if not os.path.exists(cfg_path):
    raise ModelLoadError(f"{folder}: no config.json (not a Hugging Face model folder)")
  config = config_lib.from_hf(_read_json(cfg_path), cfg_path)
  tok_path = os.path.join(folder, "tokenizer.json")
  if not os.path.exists(tok_path):
    raise ModelLoadError(f"{folder}: no tokenizer.json")
  tok_cfg_path = os.path.join(folder, "tokenizer_config.json")
  tok_cfg = _read_json(tok_cfg_path) if os.path.exists(tok_cfg_path) else {}
  tokenizer = tok_lib.from_tokenizer_json(tok_path)
  tokenizer.bos_id = config.bos_id if config.bos_id is not None else _token_id(
      tokenizer, tok_cfg.get("bos_token"))
  tokenizer.eos_id = _token_id(tokenizer, tok_cfg.get("eos_token"))
  if tokenizer.eos_id is None:
    tokenizer.eos_id = config.eos_id
  tokenizer.pad_id = config.pad_id if config.pad_id is not None else _token_id(
      tokenizer, tok_cfg.get("pad_token"))
  tokenizer.add_bos = (bool(tok_cfg.get("add_bos_token", config.arch == "gemma3"))
                       and tokenizer.bos_id is not None)
  tok_lib.check_fits(tokenizer, config.vocab_size, tok_path, "config.json")
  files = open_weights(folder)

  def get(name):
    st = files.get(name)
    if st is None:
      return None
    # The name in the file may carry a multimodal prefix: find the original spelling.
    return st.get(name if name in st.header else _original(st, name))

  model = weights.build(config, get, dtype=dtype, where=folder)
  return model, tokenizer, config


def _original(st: SafetensorsFile, name: str) -> str:
  for orig in st.header:
    if weights.canonical(orig) == name:
      return orig
  raise KeyError(name)


def _token_id(tokenizer, token) -> int | None:
  if isinstance(token, dict):
    token = token.get("content")
  if not token:
    return None
  return tokenizer.token_to_id(token)


def save_folder(model, tokenizer, folder: str, *, max_shard_bytes: int | None = None) -> str:
  """Write config.json, model.safetensors (sharded with an index past `max_shard_bytes`) and
  tokenizer.json: a folder `load_folder` (and transformers) reads back."""
  from safetensors.numpy import save_file
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config_lib.to_hf(model.config), f, indent=2)
  tokenizer.backend.save(os.path.join(folder, "tokenizer.json"))
  backend = tokenizer.backend
  tok_cfg = {"add_bos_token": bool(tokenizer.add_bos)}
  for key, i in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id),
                 ("pad_token", tokenizer.pad_id)):
    if i is not None and backend.id_to_token(i) is not None:
      tok_cfg[key] = backend.id_to_token(i)
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump(tok_cfg, f, indent=2)
  tensors = weights.export(model)
  if max_shard_bytes is None:
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    return folder
  shards, cur, size = [], {}, 0
  for name, arr in tensors.items():
    if cur and size + arr.nbytes > max_shard_bytes:
      shards.append(cur)
      cur, size = {}, 0
    cur[name] = arr
    size += arr.nbytes
  shards.append(cur)
  weight_map = {}
  for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(folder, fname))
    weight_map.update({name: fname for name in shard})
  with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
               "weight_map": weight_map}, f, indent=2)
  return folder
