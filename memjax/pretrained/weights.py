"""Checkpoint tensor names (Hugging Face spelling) -> Decoder parameters, with shape checks.

Loaders hand over a `get(name) -> np.ndarray | None` in HF spelling (GGUF names are renamed
first); `build` creates the module without initialising it (nnx.eval_shape) and fills each
parameter once, converted to the requested dtype.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax.pretrained.config import DecoderConfig
from memjax.pretrained.decoder import Decoder
from memjax.pretrained.errors import ModelLoadError

# Prefixes that wrap the text model in multimodal Gemma3 checkpoints.
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
             ("language_model.lm_head.", "lm_head."))


def canonical(name: str) -> str:
  for old, new in _PREFIXES:
    if name.startswith(old):
      return new + name[len(old):]
  return name


def expected_tensors(c: DecoderConfig) -> dict[str, tuple[tuple, bool]]:
  """HF tensor name -> (nnx flat path, transpose) for every parameter of Decoder(c).

  Block paths start with ("blocks", i): row i of the stacked parameter at the rest of the path.
  """
  out = {"model.embed_tokens.weight": (("embed_tokens", "embedding"), False),
         "model.norm.weight": (("final_norm", "scale"), False)}
  if not c.tie_embeddings:
    out["lm_head.weight"] = (("lm_head",), False)
  for i in range(c.num_layers):
    p = f"model.layers.{i}."
    blk = ("blocks", i)
    out[p + "input_layernorm.weight"] = (blk + ("attn_norm", "scale"), False)
    for hf, ours in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "o")):
      out[p + f"self_attn.{hf}.weight"] = (blk + ("attn", ours, "kernel"), True)
      if c.qkv_bias and ours != "o":
        out[p + f"self_attn.{hf}.bias"] = (blk + ("attn", ours, "bias"), False)
    if c.qk_norm:
      out[p + "self_attn.q_norm.weight"] = (blk + ("attn", "q_norm", "scale"), False)
      out[p + "self_attn.k_norm.weight"] = (blk + ("attn", "k_norm", "scale"), False)
    if c.post_norms:
      out[p + "post_attention_layernorm.weight"] = (blk + ("attn_post_norm", "scale"), False)
      out[p + "pre_feedforward_layernorm.weight"] = (blk + ("mlp_norm", "scale"), False)
      out[p + "post_feedforward_layernorm.weight"] = (blk + ("mlp_post_norm", "scale"), False)
    else:
      out[p + "post_attention_layernorm.weight"] = (blk + ("mlp_norm", "scale"), False)
    for hf, ours in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
      out[p + f"mlp.{hf}.weight"] = (blk + ("mlp", ours, "kernel"), True)
  return out


def build(config: DecoderConfig, get: Callable[[str], np.ndarray | None], *, dtype,
          where: str) -> Decoder:
  """A Decoder whose every parameter comes from `get` (HF names); errors name `where`."""
  dtype = jnp.dtype(dtype)
  abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0), dtype=dtype))
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(state))
  stacked: dict[tuple, list] = {}
  for name, (path, transpose) in expected_tensors(config).items():
    arr = get(name)
    if arr is None:
      raise ModelLoadError(f"{where}: missing tensor {name!r}")
    layer = None
    if path[0] == "blocks":
      layer, path = path[1], ("blocks",) + path[2:]
    want = tuple(flat[path].get_value().shape)
    want = want[1:] if layer is not None else want
    want = want[::-1] if transpose else want  # in the file's (PyTorch) layout
    if tuple(arr.shape) != want:
      raise ModelLoadError(f"{where}: tensor {name!r} has shape {tuple(arr.shape)}, the config "
                           f"implies {want}")
    if transpose:
      arr = arr.T
    arr = np.asarray(arr, dtype=dtype)
    if layer is None:
      flat[path].set_value(jnp.asarray(arr))
    else:
      stacked.setdefault(path, [None] * config.num_layers)[layer] = arr
  for path, arrs in stacked.items():
    flat[path].set_value(jnp.asarray(np.stack(arrs)))
  return nnx.merge(graphdef, state)


def export(model: Decoder) -> dict[str, np.ndarray]:
  """HF name -> numpy array (HF layout) for every parameter: the inverse of `build`."""
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  out = {}
  for name, (path, transpose) in expected_tensors(model.config).items():
    if path[0] == "blocks":
      arr = np.asarray(flat[("blocks",) + path[2:]].get_value()[path[1]])
    else:
      arr = np.asarray(flat[path].get_value())
    out[name] = np.ascontiguousarray(arr.T if transpose else arr)
  return out
