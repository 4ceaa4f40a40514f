"""The Diffuser: its scan equals the unrolled loop, its STM depends on the context, and the
yardstick's zeroed / shuffled reach it through the memory protocol; the copy path and the
answer-only objective."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from memjax import pretrained
from memjax.core import memory as memory_lib
from memjax.dcm import diffuser as df
from memjax.dcm import diffuser_experiment as dx
from memjax.dcm import phase1a
from memjax.dcm import soft_prompt as sp
from memjax.dcm import system

TOL = dict(rtol=1e-5, atol=1e-5)
CFG = df.DiffuserConfig(slots=3, dim=32, heads=2, encoder_layers=1, steps=3)


@functools.lru_cache(maxsize=None)
def writer():
  return df.Writer(64, 1.0, CFG, rngs=nnx.Rngs(0))


def _inputs(seed=0, b=2, n=7):
  e = jax.random.normal(jax.random.key(seed), (b, n, 64))
  mask = jnp.arange(n)[None] < jnp.asarray([n, n - 2])[:, None]
  return e, mask


def test_diffuser_scan_equals_unrolled_forward_and_grad():
  w = writer()
  graphdef, params = nnx.split(w, nnx.Param)
  e, mask = _inputs()
  key = jax.random.key(3)

  def f(p, unroll):
    out = nnx.merge(graphdef, p)(e, mask, key, unroll=unroll)
    return (out ** 2).mean(), out
  (l1, o1), g1 = jax.jit(jax.value_and_grad(lambda p: f(p, False), has_aux=True))(params)
  (l2, o2), g2 = jax.jit(jax.value_and_grad(lambda p: f(p, True), has_aux=True))(params)
  np.testing.assert_allclose(o1, o2, **TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), g1, g2)
  assert o1.shape == (2, 3, 64)


def test_stm_depends_on_the_context():
  w = writer()
  e, mask = _inputs()
  key = jax.random.key(0)
  a = jax.jit(lambda e: w(e, mask, key))(e)
  b = jax.jit(lambda e: w(e, mask, key))(e.at[1, 2].add(1.0))
  np.testing.assert_allclose(a[0], b[0], **TOL)           # row 0's context did not change
  assert not np.allclose(a[1], b[1])
  # padding past a row's input is not read
  c = jax.jit(lambda e: w(e, mask, key))(e.at[1, -1].add(5.0))
  np.testing.assert_allclose(a, c, **TOL)
  # its memory follows the protocol: zeroed empties it, shuffled gives row b row b-1's STM
  m = system.Content(a)
  np.testing.assert_array_equal(memory_lib.zeroed(m).content_BxKxD, 0)
  np.testing.assert_array_equal(memory_lib.shuffled(m).content_BxKxD[1], a[0])


def test_trainer_moves_only_the_writer():
  t = pretrained.make_tiny("qwen2", 0)
  gen, gparams = sp.Generator.split(t.model, bos_id=None, eos_id=t.tokenizer.eos_id)
  w = df.Writer(64, 1.0, CFG, rngs=nnx.Rngs(1))
  wdef, wparams = nnx.split(w, nnx.Param)
  tr = df.Trainer(gen, wdef, optax.adam(1e-2))
  parts = sp.PromptParts(jnp.zeros((0, 64)), jax.random.normal(jax.random.key(0), (2, 64)))
  b, n = 2, 6
  batch = dict(input=jax.random.randint(jax.random.key(1), (b, n), 4, 300),
               input_mask=jnp.ones((b, n), jnp.int32),
               targets=jax.random.randint(jax.random.key(2), (b, 2, 3), 4, 300),
               mask=jnp.ones((b, 2, 3), jnp.float32))
  stacked = jax.tree.map(lambda x: jnp.stack([x] * 6), batch)
  run = jax.jit(tr.steps)
  w1, _, l, ce = run(wparams, tr.tx.init(wparams), gparams, parts, stacked, jax.random.key(0),
                     jnp.int32(0))
  assert l.shape == (6,) and ce.shape == (6, 2) and float(l[-1]) < float(l[0])
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(w1), jax.tree.leaves(wparams)))


COPY = df.DiffuserConfig(slots=3, dim=32, heads=2, encoder_layers=1, steps=3, copy=True)


def test_copying_diffuser_scan_equals_unrolled_and_reads_only_real_tokens():
  w = df.Writer(64, 1.0, COPY, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(w, nnx.Param)
  e, mask = _inputs()
  key = jax.random.key(3)

  def f(p, e, unroll):
    out = nnx.merge(graphdef, p)(e, mask, key, unroll=unroll)
    return (out ** 2).mean(), out
  (_, o1), g1 = jax.jit(jax.value_and_grad(lambda p: f(p, e, False), has_aux=True))(params)
  (_, o2), g2 = jax.jit(jax.value_and_grad(lambda p: f(p, e, True), has_aux=True))(params)
  np.testing.assert_allclose(o1, o2, **TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), g1, g2)
  assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g1["diffuser"]["pointer"])) > 0
  # padding past a row's input is neither attended nor copied
  _, o3 = jax.jit(lambda p: f(p, e.at[1, -1].add(5.0), False))(params)
  np.testing.assert_allclose(o1, o3, **TOL)


def test_pointer_adds_the_raw_embeddings_it_points_at():
  p = df.Pointer(8, rngs=nnx.Rngs(0))
  b, k, n, e = 2, 3, 5, 16
  y = jax.random.normal(jax.random.key(0), (b, k, 8))
  enc = jax.random.normal(jax.random.key(1), (b, n, 8))
  raw = jax.random.normal(jax.random.key(2), (b, n, e))
  # one real input token per row: every slot copies exactly that token's embedding
  mask = jnp.zeros((b, n), bool).at[0, 2].set(True).at[1, 4].set(True)
  out = p(y, enc, raw, mask)
  np.testing.assert_allclose(out[0], jnp.broadcast_to(raw[0, 2], (k, e)), **TOL)
  np.testing.assert_allclose(out[1], jnp.broadcast_to(raw[1, 4], (k, e)), **TOL)
  # in general: a convex combination of the real tokens' embeddings (reference: plain numpy)
  full = jnp.ones((b, n), bool)
  s = np.einsum("bkd,bnd->bkn", np.asarray(p.q(y)), np.asarray(p.k(enc))) / np.sqrt(8)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  np.testing.assert_allclose(p(y, enc, raw, full), np.einsum("bkn,bne->bke", w, raw), **TOL)


def test_copying_diffuser_without_embeddings_is_a_named_error():
  w = df.Writer(64, 1.0, COPY, rngs=nnx.Rngs(0))
  e, mask = _inputs()
  with pytest.raises(ValueError, match="embeds_BxNxE"):
    w.diffuser(w.encoder(e, mask), mask, jax.random.key(0))


def test_question_weight_and_the_answer_alone():
  t = pretrained.make_tiny("qwen2", 0)
  gen, gparams = sp.Generator.split(t.model, bos_id=None, eos_id=t.tokenizer.eos_id)
  wdef, wparams = nnx.split(df.Writer(64, 1.0, CFG, rngs=nnx.Rngs(1)), nnx.Param)
  parts = sp.PromptParts(jnp.zeros((0, 64)), jax.random.normal(jax.random.key(0), (2, 64)))
  b, n = 3, 6
  mask = np.zeros((b, 2, 5), np.float32)
  mask[:, 0, :5] = 1
  mask[:, 1, :2] = 1
  mask[2, 1, :3] = 1        # the longest answer: 3 tokens (its EOS included)
  batch = dict(input=jax.random.randint(jax.random.key(1), (b, n), 4, 300),
               input_mask=jnp.ones((b, n), jnp.int32),
               targets=jax.random.randint(jax.random.key(2), (b, 2, 5), 4, 300) * mask.astype(int),
               mask=jnp.asarray(mask))
  key = jax.random.key(0)
  loss = lambda qw, bt: df.Trainer(gen, wdef, optax.adam(1e-2), qw).loss(wparams, gparams, parts,
                                                                         bt, key)
  l1, ce = loss(1.0, batch)
  np.testing.assert_allclose(l1, ce.mean(), rtol=1e-6)
  l0, _ = loss(0.0, batch)
  np.testing.assert_allclose(l0, ce[1], rtol=1e-6)
  l3, _ = loss(3.0, batch)
  np.testing.assert_allclose(l3, (3 * ce[0] + ce[1]) / 4, rtol=1e-6)
  # the answer alone, cut after the longest answer, is the same answer CE: [A_mode | content]
  enc = phase1a.Encoded(np.asarray(batch["targets"]), mask, None, None, None)
  assert dx.longest_answer(enc) == 3
  la, ce_a = loss(0.0, df.Trainer.answer_only(batch, dx.longest_answer(enc)))
  assert ce_a.shape == (1,)
  np.testing.assert_allclose(la, ce[1], rtol=1e-5)
  # cut one token short, the EOS of the longest answer is lost and the CE changes
  short, _ = loss(0.0, df.Trainer.answer_only(batch, 2))
  assert not np.isclose(short, ce[1], rtol=1e-5)
