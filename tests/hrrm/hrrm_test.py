"""HRRM models: 50M parameter counts, MAC's wiring, export round trip, bad input."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from memjax.core import config as cfg
from memjax.hrrm import tokenizer as hrrm_tokenizer
from memjax.hrrm import titans
from memjax.hrrm import model as hrrm
from memjax.hrrm import export as hrrm_export


@pytest.mark.parametrize("kind", ["planner", "reasoner", "memory"])
def test_50m_parameter_counts(kind):
  m = hrrm.model_config(kind, "50m")
  assert (m.vocab_size, m.d_model, m.num_layers, m.num_heads, m.d_ff, m.max_seq_len) == (
      32000, 512, 12, 8, 2048, 2048)
  n = hrrm.param_count(m)
  assert 48_000_000 <= n <= 55_000_000, n


def test_dimensions_not_divisible_by_heads_is_a_config_error():
  m = hrrm.model_config("planner", "tiny")
  m.update(vocab_size=40, d_model=60, num_heads=8)
  with pytest.raises(cfg.ConfigError, match=r"^model.num_heads: d_model=60 is not divisible"):
    hrrm.build(m)


def _tiny_mac():
  m = hrrm.model_config("memory", "tiny")
  m.update(vocab_size=20, d_model=16, num_layers=1, num_heads=2, d_ff=32, chunk=4, mem_dim=8,
           mem_slots=8, mem_tokens=2)
  return m, hrrm.build(m, rngs=nnx.Rngs(0))


def test_mac_scan_equals_chunk_by_chunk_and_only_memory_reaches_back():
  m, model = _tiny_mac()
  graphdef, state = nnx.split(model)
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 20)

  @jax.jit
  def run(state, tokens):
    model = nnx.merge(graphdef, state)
    mem0 = model.init_memory(2)
    full, mem = model(tokens, mem0)
    st, parts = mem0, []
    for j in range(3):
      lg, st = model.chunk_step(st, tokens[:, 4 * j:4 * j + 4], 4 * j)
      parts.append(lg)
    # the last chunk with the memory reset sees nothing of chunks 0-1
    reset, _ = model.chunk_step(mem0, tokens[:, 8:], 8)
    return full, jnp.concatenate(parts, 1), mem, st, reset

  full, loop, mem, st, reset = run(state, tokens)
  np.testing.assert_allclose(full, loop, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(mem), jax.tree.leaves(st)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  other = tokens.at[:, :8].set((tokens[:, :8] + 1) % 20)
  full2, _, _, _, reset2 = run(state, other)
  np.testing.assert_allclose(reset, reset2, rtol=1e-6)             # no path but memory
  assert float(jnp.abs(full[:, 8:] - full2[:, 8:]).max()) > 1e-6  # and memory carries it
  # causal inside the chunk, memory tokens included
  third = tokens.at[:, 11].set((tokens[:, 11] + 1) % 20)
  full3, *_ = run(state, third)
  np.testing.assert_allclose(full[:, :11], full3[:, :11], rtol=1e-5, atol=1e-6)


def _tokenizer(path, special=True):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  if special:
    tok = hrrm_tokenizer.train(["<PLAN> goal 3 <SUBGOAL> 1 <ACTION> up <CHECK> 1"] * 5,
                               vocab_size=300)
  else:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["plain text only"], trainers.BpeTrainer(vocab_size=280))
  tok.save(path)
  return path


@pytest.mark.parametrize("kind", ["planner", "memory"])
def test_export_then_reload_is_identity(tmp_path, kind):
  if kind == "memory":
    m, model = _tiny_mac()
  else:
    m = hrrm.model_config(kind, "tiny")
    m.update(vocab_size=30, d_model=16, num_heads=2, d_ff=32)
    model = hrrm.build(m, rngs=nnx.Rngs(1))
  params = nnx.split(model, nnx.Param)[1]
  tok = _tokenizer(str(tmp_path / "tok.json"))
  out = str(tmp_path / "export")
  hrrm_export.save(out, m, params, tok)
  assert sorted(os.listdir(out)) == sorted(hrrm_export.FILES)
  m2, back = hrrm_export.load(out)
  assert m2.to_dict() == m.to_dict()
  la, lb = jax.tree.leaves(params), jax.tree.leaves(back)
  assert len(la) == len(lb) and all(np.array_equal(a, b) and a.dtype == b.dtype
                                    for a, b in zip(la, lb))
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["num_parameters"] == hrrm.param_count(m)


def test_incomplete_export_and_bad_tokenizer_are_clear_errors(tmp_path):
  with pytest.raises(hrrm_export.ExportError, match="missing config.json, model.safetensors"):
    hrrm_export.load(str(tmp_path))
  bad = _tokenizer(str(tmp_path / "plain.json"), special=False)
  with pytest.raises(hrrm_tokenizer.TokenizerError, match="missing special tokens"):
    hrrm_tokenizer.load(bad)
  with pytest.raises(hrrm_tokenizer.TokenizerError, match="no such tokenizer file"):
    hrrm_tokenizer.load(str(tmp_path / "nope.json"))


def test_tokenizer_keeps_special_tokens_whole(tmp_path):
  tok = hrrm_tokenizer.load(_tokenizer(str(tmp_path / "t.json")))
  ids = tok.encode("<PLAN><SoT>x<EoT>").ids
  assert ids[:2] == [tok.token_to_id("<PLAN>"), tok.token_to_id("<SoT>")]
  assert tok.token_to_id("<EoT>") in ids
