"""Loaders: HF folder and GGUF round trips, and a clear one-line error for each kind of bad input."""
import dataclasses
import json
import os
import shutil

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax import pretrained
from memjax.pretrained import gguf_file
from memjax.pretrained import hf
from memjax.pretrained import weights
from memjax.pretrained.errors import ModelLoadError

TEXT = "round trip"


@nnx.jit
def _logits(model, tokens_BxT):
  return model.logits(model(tokens_BxT)[0])


@pytest.fixture(scope="module")
def tinies():
  return {arch: pretrained.make_tiny(arch, seed=7) for arch in ("qwen2", "gemma3")}


def _ids(p):
  return jnp.asarray([p.tokenizer.encode(TEXT, add_bos=True)])


def write_gguf(p, path, *, arch=None, quantize=()):
  """A GGUF file as llama.cpp writes one: GGUF tensor names, Gemma norms stored as 1 + w."""
  c = p.config
  arch = arch or c.arch
  w = gguf.GGUFWriter(path, arch=arch)
  w.add_block_count(c.num_layers)
  w.add_context_length(128)
  w.add_embedding_length(c.dim)
  w.add_feed_forward_length(c.hidden)
  w.add_head_count(c.num_heads)
  w.add_head_count_kv(c.num_kv_heads)
  w.add_key_length(c.head_dim)
  w.add_value_length(c.head_dim)
  w.add_layer_norm_rms_eps(c.norm_eps)
  w.add_rope_freq_base(c.rope_theta)
  if c.sliding_window:
    w.add_sliding_window(c.sliding_window)
    w.add_uint32(f"{arch}.attention.sliding_window_pattern", 3)
  vocab = p.tokenizer.backend.get_vocab()
  tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
  types = [3 if i < 4 else 6 if t.startswith("<0x") else 1 for i, t in enumerate(tokens)]
  w.add_tokenizer_model("llama")
  w.add_token_list(tokens)
  w.add_token_scores([0.0] * len(tokens))
  w.add_token_types(types)
  w.add_bos_token_id(2)
  w.add_eos_token_id(1)
  w.add_unk_token_id(3)
  w.add_pad_token_id(0)
  w.add_add_bos_token(True)
  names = gguf_file.hf_to_gguf_names(c)
  for name, arr in weights.export(p.model).items():
    arr = np.asarray(arr, np.float32)
    if c.arch == "gemma3" and name.endswith("norm.weight"):
      arr = arr + 1.0
    gname = names[name]
    if gname in quantize:
      w.add_tensor(gname, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0),
                   raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      w.add_tensor(gname, arr)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


# --- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,shard", [("qwen2", None), ("gemma3", 30_000)])
def test_hf_folder_round_trip(tinies, tmp_path, arch, shard):
  p = tinies[arch]
  hf.save_folder(p.model, p.tokenizer, str(tmp_path), max_shard_bytes=shard)
  assert os.path.exists(tmp_path / "model.safetensors.index.json") == (shard is not None)
  q = pretrained.load(str(tmp_path), verbose=False)
  assert q.config == p.config
  assert q.tokenizer.encode(TEXT) == p.tokenizer.encode(TEXT)
  assert (q.tokenizer.bos_id, q.tokenizer.eos_id, q.tokenizer.add_bos) == (2, 1, True)
  np.testing.assert_array_equal(np.asarray(_logits(q.model, _ids(p))),
                                np.asarray(_logits(p.model, _ids(p))))


def test_bfloat16_load(tinies, tmp_path):
  p = tinies["qwen2"]
  hf.save_folder(p.model, p.tokenizer, str(tmp_path))
  q = pretrained.load(str(tmp_path), dtype="bfloat16", verbose=False)
  for path, v in nnx.to_flat_state(nnx.state(q.model, nnx.Param)):
    assert v.get_value().dtype == jnp.bfloat16, path
  ref = weights.export(p.model)["model.layers.1.mlp.up_proj.weight"]
  got = weights.export(q.model)["model.layers.1.mlp.up_proj.weight"]
  np.testing.assert_array_equal(got, ref.astype(jnp.bfloat16))
  hidden, logits = nnx.jit(lambda m, x: (m(x)[0], m.logits(m(x)[0])))(q.model, _ids(p))
  assert hidden.dtype == jnp.bfloat16 and logits.dtype == jnp.float32


def test_gguf_round_trip_gemma3(tinies, tmp_path, capsys):
  p = tinies["gemma3"]
  path = write_gguf(p, str(tmp_path / "tiny.gguf"))
  q = pretrained.load(path)
  assert "Gemma Terms of Use" in capsys.readouterr().err  # the notice the terms require
  assert q.notice and "ai.google.dev/gemma/terms" in q.notice
  assert q.config.norm_eps == pytest.approx(p.config.norm_eps, rel=1e-7)  # stored as float32
  assert dataclasses.replace(q.config, norm_eps=p.config.norm_eps) == p.config
  assert q.tokenizer.encode(TEXT) == p.tokenizer.encode(TEXT)
  assert q.tokenizer.decode(q.tokenizer.encode(TEXT)) == TEXT
  # (1 + w) - 1 in float32: exact to a rounding of the stored norm scales.
  np.testing.assert_allclose(np.asarray(_logits(q.model, _ids(p))),
                             np.asarray(_logits(p.model, _ids(p))), atol=1e-5, rtol=0)


def test_gguf_quantized_tensor_is_dequantized(tinies, tmp_path):
  p = tinies["qwen2"]
  path = write_gguf(p, str(tmp_path / "q8.gguf"), quantize=("blk.0.ffn_up.weight",))
  f = gguf_file.GGUFFile(path)
  ref = weights.export(p.model)["model.layers.0.mlp.up_proj.weight"]
  got = f.get("blk.0.ffn_up.weight")
  assert got.shape == ref.shape
  q8_step = np.abs(ref).max() / 127  # Q8_0: 8-bit codes per block of 32 with one scale
  assert 0 < np.abs(got - ref).max() <= q8_step
  assert pretrained.load(path, verbose=False).config.arch == "qwen2"


# --- bad input ---------------------------------------------------------------------------------

def _error(path, **kw) -> str:
  with pytest.raises(ModelLoadError) as e:
    pretrained.load(str(path), verbose=False, **kw)
  msg = str(e.value)
  assert isinstance(e.value, ValueError) and "\n" not in msg
  return msg


@pytest.fixture
def folder(tinies, tmp_path):
  p = tinies["qwen2"]
  return hf.save_folder(p.model, p.tokenizer, str(tmp_path / "m"), max_shard_bytes=30_000)


def test_missing_path_and_folder_without_config(tmp_path):
  assert "no such model folder or GGUF file" in _error(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  msg = _error(tmp_path / "empty")
  assert "empty" in msg and "config.json" in msg


def test_incomplete_folder(folder):
  index = json.load(open(os.path.join(folder, "model.safetensors.index.json")))
  shard = sorted(set(index["weight_map"].values()))[1]
  os.rename(os.path.join(folder, shard), os.path.join(folder, "moved"))
  msg = _error(folder)
  assert shard in msg and "missing" in msg
  os.rename(os.path.join(folder, "moved"), os.path.join(folder, shard))
  os.remove(os.path.join(folder, "tokenizer.json"))
  assert "no tokenizer.json" in _error(folder)


def test_missing_tensor(tinies, tmp_path):
  p = tinies["qwen2"]
  from safetensors.numpy import save_file
  folder = hf.save_folder(p.model, p.tokenizer, str(tmp_path))
  tensors = weights.export(p.model)
  del tensors["model.layers.1.self_attn.k_proj.bias"]
  save_file(tensors, os.path.join(folder, "model.safetensors"))
  assert "missing tensor 'model.layers.1.self_attn.k_proj.bias'" in _error(folder)


def test_wrong_shape_names_tensor(tinies, tmp_path):
  p = tinies["qwen2"]
  folder = hf.save_folder(p.model, p.tokenizer, str(tmp_path))
  cfg = json.load(open(os.path.join(folder, "config.json")))
  cfg["intermediate_size"] = 96
  json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
  msg = _error(folder)
  assert "mlp" in msg and "shape" in msg and "(96" in msg


@pytest.mark.parametrize("model_type", ["llama", None])
def test_unsupported_architecture_in_config(folder, model_type):
  cfg_path = os.path.join(folder, "config.json")
  cfg = json.load(open(cfg_path))
  cfg["model_type"] = model_type
  json.dump(cfg, open(cfg_path, "w"))
  msg = _error(folder)
  assert "config.json" in msg and f"model_type {model_type!r} is not supported" in msg


def test_truncated_safetensors(folder):
  index = json.load(open(os.path.join(folder, "model.safetensors.index.json")))
  shard = os.path.join(folder, sorted(set(index["weight_map"].values()))[0])
  size = os.path.getsize(shard)
  with open(shard, "r+b") as f:
    f.truncate(size - 100)
  msg = _error(folder)
  assert os.path.basename(shard) in msg and "truncated" in msg
  with open(shard, "r+b") as f:
    f.truncate(5)
  assert "truncated" in _error(folder)


def test_tokenizer_that_does_not_match_the_model(tinies, tmp_path):
  p = tinies["gemma3"]
  folder = hf.save_folder(p.model, p.tokenizer, str(tmp_path))
  cfg_path = os.path.join(folder, "config.json")
  cfg = json.load(open(cfg_path))
  cfg["vocab_size"] = 300  # the tokenizer has 355 tokens
  json.dump(cfg, open(cfg_path, "w"))
  msg = _error(folder)
  assert "tokenizer.json" in msg and "355" in msg and "300" in msg


def test_unreadable_json_and_tokenizer(folder):
  with open(os.path.join(folder, "tokenizer.json"), "w") as f:
    f.write("{not json")
  assert "tokenizer.json" in _error(folder)
  with open(os.path.join(folder, "config.json"), "w") as f:
    f.write("{")
  assert "config.json: not valid JSON" in _error(folder)


def test_gguf_errors(tinies, tmp_path):
  p = tinies["gemma3"]
  good = write_gguf(p, str(tmp_path / "good.gguf"))
  llama = write_gguf(p, str(tmp_path / "llama.gguf"), arch="llama")
  msg = _error(llama)
  assert "llama.gguf" in msg and "general.architecture 'llama' is not supported" in msg
  cut = str(tmp_path / "cut.gguf")
  shutil.copy(good, cut)
  with open(cut, "r+b") as f:
    f.truncate(os.path.getsize(good) - 64)
  msg = _error(cut)
  assert "cut.gguf" in msg and "truncated" in msg
  with open(cut, "r+b") as f:
    f.truncate(200)  # inside the metadata
  assert "truncated" in _error(cut)
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"NOPE" + bytes(100))
  assert "not a GGUF file" in _error(bad)


def test_gguf_tokenizer_that_does_not_match_the_model(tmp_path):
  small = pretrained.make_tiny("qwen2", seed=7)
  # Same model, but an embedding with fewer rows than the tokenizer has tokens.
  emb = small.model.embed_tokens.embedding
  small.model.embed_tokens.embedding.set_value(emb[...][:300])
  small.model.config = dataclasses.replace(small.config, vocab_size=300)
  small.config = small.model.config
  path = write_gguf(small, str(tmp_path / "mismatch.gguf"))
  msg = _error(path)
  assert "mismatch.gguf" in msg and "355" in msg and "300" in msg


def test_bad_dtype(folder):
  assert "dtype" in _error(folder, dtype="float16")
