"""THEN tiers: L1 -> L2 -> L3 keeps every trace; retrieval of everything equals a big ring buffer;
save/restore is the identity; bad tier files are one clear error."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import then_recall
from memjax.core import tasks
from memjax.then import model as then
from memjax.then.model import Window
from memjax.then.tiered import Tiered
from memjax.then.tiers import TierError, Tiers

# float32 with a different summation order inside one softmax (slots permuted, extra masked
# slots): the tolerance of the repository's other segmented-vs-whole THEN test.
ATOL = 1e-5


def _model(**model):
  c = then_recall.get_config("tiny")   # segment 8, capacity 16
  c.model.update(model)
  task = tasks.make_task(c.task)
  return task, then.ThenModel(c, task.vocab_size, task.segment_len)


def _tiers(path, model, batch, l2_blocks):
  m = model.m
  return Tiers(str(path), batch=batch, layers=m.layers, kv_heads=m.kv_heads,
               head_dim=m.dim // m.heads, block=model.writes_per_segment, l2_blocks=l2_blocks)


def _stream(task, batch, segments, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, task.vocab_size, (batch, segments * task.segment_len)),
                     jnp.int32)


@pytest.mark.parametrize("layers", [1, 2])
def test_retrieving_every_block_equals_the_big_ring_buffer(tmp_path, layers):
  """L1 of 16 + tiers (L2 of 2 blocks, so most go to L3), top_k = every block: the logits of
  every segment equal the model whose ring buffer holds the whole stream. With 2 layers the
  traces depend on what is read, so this covers retrieval during ingest too."""
  task, small = _model(layers=layers)
  _, big = _model(layers=layers, capacity=12 * 8)
  params = small.init_params(jax.random.key(0))
  x = _stream(task, 3, 12)
  want, big_state = big.run(params, big.init_state(3), x)
  tiers = _tiers(tmp_path, small, 3, l2_blocks=2)
  run = Tiered(small, params, tiers, top_k=12, span=1)
  got, state = run.run(small.init_state(3), x)
  assert tiers.n_blocks == 12 - 2 and tiers.n_l3 == 8   # 2 segments stay in L1
  np.testing.assert_allclose(got, want, atol=ATOL)
  # non-vacuous: the same run with the retrieved traces zeroed (an empty window) differs
  no_window, _ = Tiered(small, params, _tiers(tmp_path / "b", small, 3, 2), top_k=12,
                        span=1).run(small.init_state(3), x, use_tiers=False)
  assert float(jnp.abs(no_window[:, 3 * 8:] - want[:, 3 * 8:]).max()) > 1e-2


def test_eviction_order_keeps_every_trace(tmp_path):
  """Blocks 0..n-1 of the tiers, then L1 from its cursor: the big buffer's traces, in order."""
  task, small = _model(layers=2)
  _, big = _model(layers=2, capacity=10 * 8)
  params = small.init_params(jax.random.key(1))
  x = _stream(task, 2, 10, seed=1)
  _, big_state = big.run(params, big.init_state(2), x)
  tiers = _tiers(tmp_path, small, 2, l2_blocks=3)
  state = Tiered(small, params, tiers, top_k=10, span=1).run(small.init_state(2), x)[1]
  for row in range(2):
    ks = [tiers.read_block(row, j)[0] for j in range(tiers.n_blocks)]
    assert all(tiers.read_block(row, j)[2].all() for j in range(tiers.n_blocks))
    c = small.m.capacity
    order = (int(state.traces.cursor_B[row]) + np.arange(c)) % c   # oldest first
    ks.append(np.asarray(state.traces.keys_BxLxCxKxD[row])[:, order])
    np.testing.assert_allclose(np.concatenate(ks, 1), big_state.traces.keys_BxLxCxKxD[row],
                               atol=ATOL)
  assert tiers.n_l3 == 8 - 3 and os.path.getsize(tiers.l3_path(0)) == 5 * tiers.block_bytes


def test_fast_ingest_equals_stepwise_ingest_for_one_layer(tmp_path):
  """The scanned ingest (reads L1 only) stores the same traces as one step per segment with
  retrieval when the model has one layer (its keys/values do not depend on what it reads)."""
  task, model = _model()
  params = model.init_params(jax.random.key(2))
  x = _stream(task, 2, 9, seed=2)
  fast = _tiers(tmp_path / "fast", model, 2, 2)
  run = Tiered(model, params, fast, top_k=2, chunk_segments=4)
  s_fast = run.ingest(model.init_state(2), x)
  slow = _tiers(tmp_path / "slow", model, 2, 2)
  s_slow = Tiered(model, params, slow, top_k=2).ingest(model.init_state(2), x, exact=True)
  assert fast.n_blocks == slow.n_blocks == 7
  for j in range(7):
    np.testing.assert_allclose(fast.read_block(1, j)[0], slow.read_block(1, j)[0], atol=ATOL)
  for a, b in zip(jax.tree.leaves(s_fast), jax.tree.leaves(s_slow)):
    np.testing.assert_allclose(a, b, atol=ATOL)


def test_addressing_finds_the_distinct_block_and_its_successor(tmp_path):
  """Hand-made: 6 blocks of one shared key; block 3 holds a key along e_0. A query along e_0
  must retrieve block 3 (and block 4, span 2), nothing else; a wrong retrieval fails here."""
  t = Tiers(str(tmp_path), batch=1, layers=1, kv_heads=1, head_dim=4, block=2, l2_blocks=2)
  common = np.array([0, 0, 1, 0], np.float32)
  for j in range(6):
    k = np.tile(common, (1, 1, 2, 1, 1))
    if j == 3:
      k[0, 0, 1, 0] = [5, 0, 1, 0]
    t.append(k, k + 100 * j, np.ones((1, 2), bool))
  q = np.array([1, 0, 0, 0], np.float32).reshape(1, 1, 1, 4)
  assert int(np.argmax(t.scores(q))) == 3
  _, model = _model()

  class Fake:   # only what Tiered reads of a model to build a window
    writes_per_segment, segment_len = 2, 2
    m = model.m
    step = ingest_chunk = address = staticmethod(lambda *a: None)

  w = Tiered(Fake(), None, t, top_k=1, span=2)._window(q, None)
  assert np.asarray(w.valid_BxR).tolist() == [[True] * 4]
  assert np.asarray(w.values_BxLxRxKxD)[0, 0, :, 0, 2].tolist() == [301, 301, 401, 401]


def test_save_restore_is_identity_and_bad_files_are_one_line(tmp_path, monkeypatch):
  from memjax.then import tiers as tiers_lib
  monkeypatch.setattr(tiers_lib._Paged, "PAGE", 4)   # 6 blocks: two pages of summaries
  task, model = _model()
  params = model.init_params(jax.random.key(3))
  x = _stream(task, 2, 8, seed=3)
  tiers = _tiers(tmp_path, model, 2, l2_blocks=2)
  run = Tiered(model, params, tiers, top_k=3)
  state = run.ingest(model.init_state(2), x)
  q = np.random.default_rng(0).normal(size=(2, 8, 2, 16)).astype(np.float32)
  tiers.save()
  dims = dict(batch=2, layers=1, kv_heads=2, head_dim=16, block=8, l2_blocks=2)
  again = Tiers.open(str(tmp_path), **dims)
  assert again.n_blocks == tiers.n_blocks == 6
  for row in range(2):
    for j in range(6):
      for a, b in zip(again.read_block(row, j), tiers.read_block(row, j)):
        np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(again.scores(q), tiers.scores(q))
  # an append after the save (a kill before the next save): the extra bytes are dropped
  size = os.path.getsize(tiers.l3_path(0))
  with open(tiers.l3_path(0), "ab") as f:
    f.write(b"x" * 100)
  Tiers.open(str(tmp_path), **dims)
  assert os.path.getsize(tiers.l3_path(0)) == size
  # wrong dims, truncated L3, damaged state file: one line, the files left as they were
  with pytest.raises(TierError, match="written for dims"):
    Tiers.open(str(tmp_path), **{**dims, "l2_blocks": 3})
  state_bytes = open(os.path.join(tmp_path, "tiers.npz"), "rb").read()
  with open(tiers.l3_path(1), "rb+") as f:
    f.truncate(size - 1)
  with pytest.raises(TierError, match="missing or truncated"):
    Tiers.open(str(tmp_path), **dims)
  os.remove(tiers.l3_path(1))
  with pytest.raises(TierError, match="missing or truncated"):
    Tiers.open(str(tmp_path), **dims)
  with open(os.path.join(tmp_path, "tiers.npz"), "r+b") as f:
    f.write(b"garbage!")
  with pytest.raises(TierError, match="unreadable tier file") as e:
    Tiers.open(str(tmp_path), **dims)
  assert "\n" not in str(e.value)
  del state, state_bytes


def test_a_block_of_the_wrong_shape_is_refused(tmp_path):
  t = Tiers(str(tmp_path), batch=1, layers=1, kv_heads=1, head_dim=4, block=2, l2_blocks=2)
  with pytest.raises(TierError, match="a block is"):
    t.append(np.zeros((1, 1, 3, 1, 4)), np.zeros((1, 1, 3, 1, 4)), np.ones((1, 3), bool))


def test_scorer_in_chunks_equals_one_pass(tmp_path, monkeypatch):
  from memjax.then import tiers as tiers_lib
  rng = np.random.default_rng(0)
  monkeypatch.setattr(tiers_lib._Paged, "PAGE", 4)   # summaries over three pages
  t = Tiers(str(tmp_path), batch=2, layers=1, kv_heads=2, head_dim=4, block=3, l2_blocks=2)
  ks = rng.normal(size=(10, 2, 1, 3, 2, 4)).astype(np.float32)
  for k in ks:
    t.append(k, k, np.ones((2, 3), bool))
  q = rng.normal(size=(2, 5, 4, 4)).astype(np.float32)   # 4 query heads on 2 kv heads
  # the bound: the largest q . k over every sign pattern of the block's max/min corners
  stored = t._summary.upto(10).astype(np.float32)   # B x 10 x 2 x K x D, float16 kept
  hi_true = ks[:, :, 0].max(2).transpose(1, 0, 2, 3)
  lo_true = ks[:, :, 0].min(2).transpose(1, 0, 2, 3)
  hi, lo = stored[:, :, 0], stored[:, :, 1]
  assert (hi >= hi_true).all() and (lo <= lo_true).all()   # rounded outward
  ulp = 2.0 ** -9 * np.maximum(np.abs(hi_true), np.abs(lo_true)) + 2.0 ** -24
  assert (hi - hi_true <= ulp).all() and (lo_true - lo <= ulp).all()   # by at most one ulp
  qq = q.reshape(2, 5, 2, 2, 4)
  d = np.einsum("bskgd,bnkd->bnskg", np.maximum(qq, 0), hi) + np.einsum(
      "bskgd,bnkd->bnskg", np.minimum(qq, 0), lo)
  d = d.reshape(2, 10, 5, 4)
  keys = ks[:, :, 0].transpose(1, 0, 2, 3, 4)   # B x 10 blocks x 3 traces x K x D
  exact = np.einsum("bskgd,bntkd->bnstkg", qq, keys).max(3).reshape(2, 10, 5, 4)
  assert (t.dots(q, np.arange(10)) >= exact - 1e-6).all()   # an upper bound of every q . k
  want = ((d - d.mean(1, keepdims=True)) / d.std(1, keepdims=True)).max(2).sum(-1)
  monkeypatch.setattr(tiers_lib, "SCORE_CHUNK", 3)
  sc = tiers_lib.Scorer(t, q).add(4).add(10)
  np.testing.assert_allclose(sc.scores(), want, rtol=1e-4, atol=1e-4)
  perm = np.array([1, 0])
  # rows=perm: batch row 0 reads tier row 1 (the shuffled memory)
  np.testing.assert_allclose(t.scores(q, rows=perm)[0], t.scores(q[::-1])[1], rtol=1e-6)


def test_rerank_is_the_best_key_match_of_each_block(tmp_path):
  rng = np.random.default_rng(1)
  t = Tiers(str(tmp_path), batch=2, layers=2, kv_heads=1, head_dim=4, block=3, l2_blocks=2)
  for j in range(7):
    k = rng.normal(size=(2, 2, 3, 1, 4))
    valid = np.ones((2, 3), bool)
    valid[:, 2] = j != 5   # block 5: its last trace is not a trace
    t.append(k, k, valid)
  q = rng.normal(size=(2, 4, 2, 4)).astype(np.float32)   # 2 query heads on one kv head
  ids = [[0, 5, 6], [4, 1, 3]]                            # L3 and L2 blocks, any order
  got = t.rerank(q, ids, rows=[1, 0])
  for b, src in enumerate([1, 0]):
    for i, j in enumerate(ids[b]):
      k, _, ok = t.read_block(src, j)
      want = np.einsum("shd,nd->nsh", q[b], k[0, :, 0])[ok].max((0, 1)).sum()
      np.testing.assert_allclose(got[b, i], want, rtol=1e-6)
