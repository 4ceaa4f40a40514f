"""Hugging Face style folders for HRRM models: config.json, model.safetensors, tokenizer.json.

`save(folder, model_cfg, params, tokenizer_path)` writes them; `load(folder)`
rebuilds (model_cfg, params) with every array bit-identical. Parameter names are
the nnx paths ("core.h_net.blocks.0.attn.q.kernel").
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
from flax import nnx

from memjax.hrrm import model as hrrm

FILES = ("config.json", "model.safetensors", "tokenizer.json")
FORMAT = "memjax-hrrm/1"


class ExportError(ValueError):
  """An export folder is incomplete or does not match its config."""


def _names(params) -> list[tuple[str, np.ndarray]]:
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator=".")
    out.append((name.removesuffix(".value"), x))
  return out


def save(folder: str, model_cfg: ml_collections.ConfigDict, params, tokenizer_path: str,
         vocab_size: int | None = None) -> str:
  from safetensors.numpy import save_file
  from memjax.hrrm import tokenizer as hrrm_tokenizer
  hrrm_tokenizer.load(tokenizer_path)          # refuses a tokenizer without the special tokens
  os.makedirs(folder, exist_ok=True)
  m = model_cfg.to_dict()
  if not m.get("vocab_size"):
    m["vocab_size"] = int(vocab_size)
  tensors = {name: np.asarray(jax.device_get(x)) for name, x in _names(params)}
  config = {"format": FORMAT, "model_type": m["name"], "architectures": [m["name"]],
            "num_parameters": int(sum(a.size for a in tensors.values())), "memjax": m}
  save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": FORMAT})
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  if os.path.abspath(tokenizer_path) != os.path.abspath(os.path.join(folder, "tokenizer.json")):
    shutil.copyfile(tokenizer_path, os.path.join(folder, "tokenizer.json"))
  return folder


def load(folder: str):
  """(model_cfg, params) from an export folder; ExportError naming what is missing or wrong."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  from memjax.hrrm import tokenizer as hrrm_tokenizer
  if not os.path.isdir(folder):
    raise ExportError(f"{folder}: no such export folder")
  missing = [f for f in FILES if not os.path.isfile(os.path.join(folder, f))]
  if missing:
    raise ExportError(f"{folder}: incomplete export, missing {', '.join(missing)}")
  try:
    with open(os.path.join(folder, "config.json")) as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise ExportError(f"{folder}/config.json: not JSON ({e})") from e
  if config.get("format") != FORMAT or "memjax" not in config:
    raise ExportError(f"{folder}/config.json: not a memjax HRRM export (format "
                      f"{config.get('format')!r}, expected {FORMAT!r})")
  hrrm_tokenizer.load(os.path.join(folder, "tokenizer.json"))
  m = ml_collections.ConfigDict(config["memjax"])
  abstract = nnx.split(nnx.eval_shape(lambda: hrrm.build(m)), nnx.Param)[1]
  try:
    tensors = load_file(os.path.join(folder, "model.safetensors"))
  except (SafetensorError, OSError) as e:
    raise ExportError(f"{folder}/model.safetensors: unreadable ({e})") from e
  leaves, treedef = jax.tree_util.tree_flatten(abstract)
  names = [n for n, _ in _names(abstract)]
  absent = [n for n in names if n not in tensors]
  if absent:
    raise ExportError(f"{folder}/model.safetensors: missing tensors {absent[:3]}"
                      f"{' ...' if len(absent) > 3 else ''}")
  extra = sorted(set(tensors) - set(names))
  if extra:
    raise ExportError(f"{folder}/model.safetensors: unexpected tensors {extra[:3]}")
  out = []
  for n, a in zip(names, leaves):
    t = tensors[n]
    if t.shape != a.shape or t.dtype != a.dtype:
      raise ExportError(f"{folder}/model.safetensors: {n} is {t.dtype}{list(t.shape)}, config "
                        f"says {a.dtype}{list(a.shape)}")
    out.append(jax.numpy.asarray(t))
  return m, jax.tree_util.tree_unflatten(treedef, out)
