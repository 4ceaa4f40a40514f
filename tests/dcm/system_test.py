"""Phase 1a under the shared yardstick: the contents follow the memory protocol, the modes come
from memjax.core.yardstick, exact match is SQuAD's on the decoded text."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import pretrained
from memjax.core import memory as memory_lib
from memjax.core import yardstick
from memjax.dcm import soft_prompt as sp
from memjax.dcm import system


@functools.lru_cache(maxsize=None)
def tiny():
  return pretrained.make_tiny("qwen2", 0)


def test_content_follows_the_protocol():
  c = system.Content(jnp.arange(24, dtype=jnp.float32).reshape(3, 4, 2))
  np.testing.assert_array_equal(memory_lib.zeroed(c).content_BxKxD, 0)
  # one convention for every design: row b reads row b - 1's memory
  np.testing.assert_array_equal(memory_lib.shuffled(c).content_BxKxD[1], c.content_BxKxD[0])
  np.testing.assert_array_equal(memory_lib.shuffled(c).content_BxKxD[0], c.content_BxKxD[2])
  assert memory_lib.flat(c).shape == (3, 8)


def _reader(answers, eos):
  t = tiny()
  gen, params = sp.Generator.split(t.model, bos_id=None, eos_id=eos)
  return system.Reader(gen, t.tokenizer, tuple(answers), tuple(len(a) for a in answers), False,
                       4, 4), params


def test_exact_match_on_hand_made_decodes():
  tok = tiny().tokenizer
  eos = tok.eos_id
  answers = ["Paris", "the Eiffel Tower", "blue"]
  r, _ = _reader(answers, eos)
  ids = lambda s: list(tok.encode(s))
  rows = [ids(" paris.") + [eos], ids(" Eiffel Tower") + [eos], ids(" blue sky") + [eos]]
  m = max(map(len, rows))
  toks = np.asarray([x + [eos] * (m - len(x)) for x in rows], np.int32)
  got = jax.jit(lambda t, i, v: r._correct(t, i, v, False))(
      toks, np.arange(3, dtype=np.int32), np.ones(3, bool))
  assert float(got) == 2.0                     # case, punctuation, articles forgiven; extra word not
  # invalid (padding) rows are not scored
  got = jax.jit(lambda t, i, v: r._correct(t, i, v, False))(
      toks, np.arange(3, dtype=np.int32), np.asarray([True, False, True]))
  assert float(got) == 1.0
  # the oracle reads text: its answer ends at the first line break
  nl = np.asarray([ids(" Paris\nQuestion") + [eos]], np.int32)
  assert float(r._correct(nl, np.zeros(1, np.int32), np.ones(1, bool), True)) == 1.0
  assert float(r._correct(nl, np.zeros(1, np.int32), np.ones(1, bool), False)) == 0.0


@pytest.mark.slow   # ~30 s on the 2-core CPU; .ci/run's slow line runs it by name
def test_yardstick_modes_come_from_the_protocol():
  """On an untrained Generator: zeroed changes the answer loss, shuffled with batch 1 == memory."""
  t = tiny()
  r, params = _reader(["cat", "dog", "red", "blue"], t.tokenizer.eos_id)
  d = t.model.embed(jnp.zeros((1, 1), jnp.int32)).shape[-1]
  parts = sp.PromptParts(jnp.zeros((0, d)), jax.random.normal(jax.random.key(0), (2, d)))
  ans = jax.random.randint(jax.random.key(1), (4, 3), 4, 300)
  batch = lambda b: dict(content=np.asarray(jax.random.normal(jax.random.key(2), (b, 3, d))),
                         index=np.arange(b, dtype=np.int32), valid=np.ones(b, bool),
                         answer=np.asarray(ans[:b]), answer_mask=np.ones((b, 3), np.float32),
                         oracle=np.asarray(ans[:b]), oracle_len=np.full(b, 2, np.int32))
  sysm = system.make_system(r)
  p = {"generator": params, "parts": parts}
  out = yardstick.mode_outputs(sysm, p, batch(4))
  assert not np.isclose(float(out["zeroed"]["loss"]), float(out["memory"]["loss"]))
  assert not np.isclose(float(out["shuffled"]["loss"]), float(out["memory"]["loss"]))
  assert float(out["memory"]["count"]) == 4.0
  one = yardstick.mode_outputs(sysm, p, batch(1))
  np.testing.assert_allclose(one["shuffled"]["loss"], one["memory"]["loss"], rtol=1e-6)
  res = yardstick.evaluate(sysm, p, [batch(4)], chance=0.125)
  for k in yardstick.KEYS:
    assert res[k] is not None, k
