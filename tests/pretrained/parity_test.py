"""Our decoders == transformers' PyTorch models on tiny random configs saved to disk.

Skips without torch/transformers (the `parity` extra of setup.py); fails where they are
installed but do not import.
"""
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from parity_extra import require  # noqa: E402

torch = require("torch")
transformers = require("transformers")

from memjax import pretrained  # noqa: E402

TOL = 1e-4  # float32
PROMPT = "The quick brown fox jumps"  # 26 tokens with BOS: longer than the sliding window
NEW = 8


@nnx.jit
def _forward_logits(model, tokens_BxT):
  return model.logits(model(tokens_BxT)[0])


def _perturb(model, seed):
  """Random norms and biases too (HF initialises them to constants)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = 0.1 if ("norm" in name or "bias" in name) else 0.0
      if scale:
        p.add_(scale * torch.randn(p.shape, generator=g))


def _qwen2(tie, theta):
  return transformers.Qwen2Config(
      vocab_size=384, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, intermediate_size=128, rope_theta=theta, tie_word_embeddings=tie,
      bos_token_id=2, eos_token_id=1, pad_token_id=0), transformers.Qwen2ForCausalLM


def _gemma3(**kw):
  cfg = dict(vocab_size=384, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, intermediate_size=128, sliding_window=5,
             layer_types=["sliding_attention", "sliding_attention", "full_attention",
                          "sliding_attention"],
             query_pre_attn_scalar=24, bos_token_id=2, eos_token_id=1, pad_token_id=0)
  cfg.update(kw)
  return transformers.Gemma3TextConfig(**cfg), transformers.Gemma3ForCausalLM


CASES = {
    "qwen2_untied": lambda: _qwen2(False, 1e6) + ({},),
    "qwen2_tied_sharded": lambda: _qwen2(True, 1e4) + ({"max_shard_size": "40KB"},),
    "gemma3_sliding_sharded_softcap_linear_rope": lambda: _gemma3(
        final_logit_softcapping=5.0,
        rope_parameters={"full_attention": {"rope_type": "linear", "rope_theta": 1e6,
                                            "factor": 4.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
    ) + ({"max_shard_size": "40KB"},),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
  config, cls, save_kw = CASES[request.param]()
  torch.manual_seed(0)
  hf = cls._from_config(config, attn_implementation="eager").eval()
  _perturb(hf, 1)
  folder = str(tmp_path_factory.mktemp(request.param))
  hf.save_pretrained(folder, **save_kw)
  pretrained.tiny_tokenizer().backend.save(os.path.join(folder, "tokenizer.json"))
  ours = pretrained.load(folder, verbose=False)
  return request.param, folder, hf, ours


def test_folder_is_what_the_case_says(pair):
  name, folder, _, _ = pair
  sharded = os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
  assert sharded == ("sharded" in name)


def test_full_forward_logits_match(pair):
  _, _, hf, ours = pair
  ids = ours.tokenizer.encode(PROMPT, add_bos=True)
  if ours.config.sliding_window:
    assert len(ids) + NEW > 2 * ours.config.sliding_window
  with torch.no_grad():
    ref = hf(torch.tensor([ids, ids[::-1]])).logits.numpy()
  got = np.asarray(_forward_logits(ours.model, jnp.asarray([ids, ids[::-1]])))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


def test_cached_greedy_decoding_matches(pair):
  _, _, hf, ours = pair
  ids = ours.tokenizer.encode(PROMPT, add_bos=True)
  with torch.no_grad():
    out = hf.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                      output_logits=True, return_dict_in_generate=True, eos_token_id=None,
                      pad_token_id=0)
  ref_tokens = out.sequences[0, len(ids):].numpy()
  ref_logits = np.stack([x[0].numpy() for x in out.logits])  # NEW x V, one per step
  tokens, logits = pretrained.greedy_generate(ours.model, tokens_BxT=jnp.asarray([ids]),
                                              max_new_tokens=NEW, return_logits=True)
  np.testing.assert_array_equal(np.asarray(tokens[0]), ref_tokens)
  np.testing.assert_allclose(np.asarray(logits[0]), ref_logits, atol=TOL, rtol=0)
