"""HRSA-TRM model: encoder local == masked dense, zeroed memory == no-memory path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax.models.hrsa_trm import DecodeControl, HRSAConfig, HRSATRM

CFG = HRSAConfig(vocab_size=64, dim=16, heads=2, enc_layers=1, enc_chunk=8, enc_halo=5,
                 max_context=64, slots=(2, 4), denoise_steps=2, dec_layers=1, ctx=6,
                 attention_backend="reference")


@pytest.fixture(scope="module")
def model():
  return HRSATRM(CFG, rngs=nnx.Rngs(0))


def test_encoder_chunked_local_equals_masked_dense(model):
  doc = jax.random.randint(jax.random.key(0), (2, 45), 0, 64)   # not a multiple of the chunk
  local = model.encoder(doc)
  dense = model.encoder(doc, dense=True)
  np.testing.assert_allclose(local, dense, rtol=1e-5, atol=1e-5)


def test_zeroed_memory_equals_no_memory_path(model):
  doc = jax.random.randint(jax.random.key(1), (3, 32), 0, 64)
  tokens = jax.random.randint(jax.random.key(2), (3, 10), 0, 64)
  memory, _ = model.ingest(doc, jax.random.key(3))
  with_zero, _ = model.decoder(tokens, memory.zeros_like())
  without, _ = model.decoder(tokens, None)
  np.testing.assert_array_equal(with_zero, without)
  with_mem, _ = model.decoder(tokens, memory)
  assert not np.allclose(with_mem, without)   # the memory does reach the output


def test_decoder_window_limits_context(model):
  doc = jax.random.randint(jax.random.key(1), (2, 32), 0, 64)
  memory, _ = model.ingest(doc, jax.random.key(3))
  t1 = jax.random.randint(jax.random.key(4), (2, 12), 0, 64)
  t2 = t1.at[:, :4].set((t1[:, :4] + 1) % 64)         # change tokens far from the end
  ctl = DecodeControl(window_B=jnp.array([4, 4]))
  a, _ = model.decoder(t1, memory, ctl)
  b, _ = model.decoder(t2, memory, ctl)
  np.testing.assert_allclose(a[:, -1], b[:, -1], rtol=1e-5, atol=1e-5)


def test_context_longer_than_encoder_supports_raises(model):
  with pytest.raises(ValueError, match="max_context"):
    model.encoder(jnp.zeros((1, 65), jnp.int32))
