"""HRSA-TRM model: encoder local == masked dense, zeroed memory == no-memory path."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from memjax.core import losses
from memjax.core import memory as memory_lib
from memjax.hrsa.diffusion import regions
from memjax.hrsa.model import DecodeControl
from memjax.hrsa.model import HRSAConfig
from memjax.hrsa.model import HRSATRM
from memjax.hrsa.model import ShiftMix

CFG = HRSAConfig(vocab_size=64, dim=16, heads=2, enc_layers=1, enc_chunk=8, enc_halo=5,
                 max_context=64, slots=(2, 4), denoise_steps=2, dec_layers=1, ctx=6,
                 enc_shift=4, dec_shift=3, attention_backend="reference")


@pytest.fixture(scope="module")
def model():
  return HRSATRM(CFG, rngs=nnx.Rngs(0))


def test_encoder_chunked_local_equals_masked_dense(model):
  doc = jax.random.randint(jax.random.key(0), (2, 45), 0, 64)   # not a multiple of the chunk
  local = model.encoder(doc)
  dense = model.encoder(doc, dense=True)
  np.testing.assert_allclose(local, dense, rtol=1e-5, atol=1e-5)


def test_encoder_token_blocked_mlp_equals_unblocked():
  make = lambda blk: HRSATRM(dataclasses.replace(CFG, enc_token_block=blk), rngs=nnx.Rngs(0))
  doc = jax.random.randint(jax.random.key(4), (2, 45), 0, 64)   # 3 blocks, the last ragged
  np.testing.assert_allclose(make(16).encoder(doc), make(0).encoder(doc), rtol=1e-5, atol=1e-5)


def test_zeroed_memory_equals_no_memory_path(model):
  doc = jax.random.randint(jax.random.key(1), (3, 32), 0, 64)
  tokens = jax.random.randint(jax.random.key(2), (3, 10), 0, 64)
  memory, _ = model.ingest(doc, jax.random.key(3))
  with_zero, _ = model.decoder(tokens, memory_lib.zeroed(memory))
  without, _ = model.decoder(tokens, None)
  np.testing.assert_array_equal(with_zero, without)
  with_mem, _ = model.decoder(tokens, memory)
  assert not np.allclose(with_mem, without)   # the memory does reach the output


@pytest.mark.parametrize("window", [1, 2, 4, 6])
def test_decoder_window_is_exact(model, window):
  # The window counts the decoder's ShiftMix lags too: the last token sees exactly the
  # last `window` tokens (one decoder layer), no more and no fewer.
  doc = jax.random.randint(jax.random.key(1), (2, 32), 0, 64)
  memory, _ = model.ingest(doc, jax.random.key(3))
  t1 = jax.random.randint(jax.random.key(4), (2, 12), 0, 64)
  ctl = DecodeControl(window_B=jnp.array([window, window]))
  last = lambda t: model.decoder(t, memory, ctl)[0][:, -1]
  base = last(t1)
  outside, inside = 12 - window - 1, 12 - window
  changed = lambda i: t1.at[:, i].set((t1[:, i] + 1) % 64)
  np.testing.assert_allclose(last(changed(outside)), base, rtol=1e-6, atol=1e-6)
  assert np.abs(last(changed(inside)) - base).max() > 1e-3


def test_context_longer_than_encoder_supports_raises(model):
  with pytest.raises(ValueError, match="max_context"):
    model.encoder(jnp.zeros((1, 65), jnp.int32))


def test_encoder_shift_looks_ahead_only(model):
  # Token i mixes in tokens i+1..i+3 (width 4) and nothing before it.
  x = jax.random.normal(jax.random.key(5), (2, 10, CFG.dim))
  y = model.encoder.shift(x)
  y2 = model.encoder.shift(x.at[:, 0].add(1.0))
  np.testing.assert_array_equal(y[:, 1:], y2[:, 1:])
  y3 = model.encoder.shift(x.at[:, 5].add(1.0))   # reaches tokens 2..5, not 1 or 6
  assert (np.abs(y3[:, 2:6] - y[:, 2:6]).max(axis=(0, 2)) > 0).all()
  np.testing.assert_array_equal(y3[:, :2], y[:, :2])
  np.testing.assert_array_equal(y3[:, 6:], y[:, 6:])


def test_decoder_shift_is_causal(model):
  x = jax.random.normal(jax.random.key(5), (2, 10, CFG.dim))
  y = model.decoder.shift(x)
  y2 = model.decoder.shift(x.at[:, -1].add(1.0))
  np.testing.assert_array_equal(y[:, :-1], y2[:, :-1])


def _train_rebuild(rebuild, params, region, steps):
  """Adam on the write loss; (token accuracy before, after)."""
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt):
    g = jax.grad(lambda p: losses.token_nll(rebuild(p), region).mean())(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt

  acc = lambda p: float((jnp.argmax(jax.jit(rebuild)(p), -1) == region).mean())
  before, opt = acc(params), tx.init(params)
  for _ in range(steps):
    params, opt = step(params, opt)
  return before, acc(params)


# Uniform random tokens, regions of 8: a head that ignored the position (one guess per slot)
# gets at most ~1/8 of a region right; chance is 1/64.
def test_write_head_rebuilds_each_region_position(model):
  slots = jax.random.normal(jax.random.key(6), (2, 4, CFG.dim))
  logits = model.write_head(slots, 8, model.embed)
  assert logits.shape == (2, 4, 8, CFG.vocab_size)
  assert not np.allclose(logits[:, :, 0], logits[:, :, 1])   # positions are told apart
  # a few steps on the write loss: the head rebuilds each slot's region token by token
  region = jax.random.randint(jax.random.key(7), (2, 4, 8), 0, CFG.vocab_size)
  graphdef, params = nnx.split(HRSATRM(CFG, rngs=nnx.Rngs(1)), nnx.Param)

  def rebuild(params):
    m = nnx.merge(graphdef, params)
    return m.write_head(slots, region.shape[-1], m.embed)

  before, after = _train_rebuild(rebuild, params, region, 40)
  assert before < 0.1 and after > 0.5, (before, after)


@pytest.mark.slow   # ~30 s of CPU: compiles the gradient through encoder and cascade
def test_write_loss_rebuilds_regions_through_the_memory():
  """doc -> memory -> M2 slots -> head, trained a few steps on the write loss alone."""
  doc = jax.random.randint(jax.random.key(7), (2, 32), 0, CFG.vocab_size)
  region = regions(doc, CFG.slots[-1])                             # B x 4 x 8
  graphdef, params = nnx.split(HRSATRM(CFG, rngs=nnx.Rngs(1)), nnx.Param)

  def rebuild(params):
    m = nnx.merge(graphdef, params)
    memory, _ = m.ingest(doc, jax.random.key(8))
    slots = m.decoder.memory_tokens(memory)[:, -CFG.slots[-1]:]
    return m.write_head(slots, region.shape[-1], m.embed)

  before, after = _train_rebuild(rebuild, params, region, 40)
  assert before < 0.1 and after > 0.5, (before, after)


@pytest.mark.parametrize("ahead", [True, False])
@pytest.mark.parametrize("width", [1, 2, 4])
def test_shift_mix_from_embedding_tables_equals_the_concatenated_lags(ahead, width):
  """ShiftMix.embedded (the encoder's path, issue 14): gathers from table @ W_j give what
  ShiftMix gives on the embedded tokens, forward and gradients into the table and W."""
  shift = ShiftMix(8, width, nnx.Rngs(0), ahead=ahead)
  g, p = nnx.split(shift, nnx.Param)
  table = jax.random.normal(jax.random.key(1), (11, 8))
  tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 11)
  w = jax.random.normal(jax.random.key(3), (2, 9, 8))
  concat = lambda p, table: nnx.merge(g, p)(table[tokens])
  gathers = lambda p, table: nnx.merge(g, p).embedded(table, tokens, table[tokens])
  np.testing.assert_allclose(gathers(p, table), concat(p, table), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda p, table: (f(p, table) * w).sum()
  got = jax.grad(loss(gathers), (0, 1))(p, table)
  want = jax.grad(loss(concat), (0, 1))(p, table)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
