"""Phase 1a soft-prompt optimization on a tiny random decoder."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.dcm import phase1a
from memjax.dcm import soft_prompt as sp
from memjax import pretrained

TOL = dict(rtol=1e-5, atol=1e-5)  # float32, highest matmul precision (tests/conftest.py)


@functools.lru_cache(maxsize=None)
def tiny(arch="qwen2"):
  return pretrained.make_tiny(arch, 0)


def tiny_config(**over):
  c = phase1a_config()
  for k, v in over.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def phase1a_config():
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "phase1a_tiny.py")
  spec = importlib.util.spec_from_file_location("phase1a_tiny_cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.train.steps = 3
  c.stm.num_slots = 2
  return c


@functools.lru_cache(maxsize=None)
def runner(data: int = 1, eps: float = 1e-8):
  t = tiny()
  return phase1a.Phase1a(t.model, t.tokenizer, tiny_config(**{"train.data_parallel": data, "optim.eps": eps}))


def batch_for(r, n=4):
  from memjax.data import qa
  ex = qa.synthetic_qa(n, seed=3)
  enc = phase1a.encode(ex, r.tokenizer, r.config)
  idx = np.arange(n)
  return dict(targets=enc.targets_NxSxT, mask=enc.mask_NxSxT, index=idx.astype(np.int32),
              valid=np.ones(n, bool), random_ce=np.full((n, 2), 10.0, np.float32),
              context_ce=np.full((n, 2), 10.0, np.float32)), enc


# --- the optimizer ------------------------------------------------------------------------------

def test_scan_equals_python_loop():
  r = runner()
  model = r.gen.merge(r.params)
  batch, _ = batch_for(r)
  src = jnp.asarray(sp.STAGE_SOURCES["stage2"])
  opt = sp.ContentOptimizer.create(steps=4, lr=0.5, clip_norm=1.0, schedule="cosine")
  options = sp.LossOptions()

  def loss_fn(c, bt, keys, i):
    return sp.batch_losses(model, r.parts, c, src, bt["targets"], bt["mask"], options=options,
                           keys_B=keys, progress=(i + 1) / opt.steps)
  c0 = jax.random.normal(jax.random.key(1), (4, 2, 2, r.dim)) * r.init_scale
  active = jnp.asarray([[True, False], [True, True], [False, False], [True, False]])
  key = jax.random.key(7)
  c_scan, s_scan, curve, _ = jax.jit(lambda c: opt.run(loss_fn, c, opt.init(c), batch, active,
                                                      key))(c0)
  step = jax.jit(lambda c, s, i: opt.step(loss_fn, c, s, batch, active, key, i))
  c, s, losses = c0, opt.init(c0), []
  for i in range(opt.steps):
    c, s, loss, _ = step(c, s, i)
    losses.append(loss)
  np.testing.assert_allclose(c_scan, c, **TOL)
  np.testing.assert_allclose(curve, np.stack(losses), **TOL)
  # inactive contents never move; active ones do
  np.testing.assert_array_equal(np.asarray(c_scan)[~np.asarray(active)],
                                np.asarray(c0)[~np.asarray(active)])
  moved = np.abs(np.asarray(c_scan - c0)).max(axis=(-1, -2))
  assert np.all(moved[np.asarray(active[:, 0]), 0] > 0)      # content 1: unread in stage 2
  assert curve[-1][0, 0] < curve[0][0, 0]


@pytest.mark.slow
def test_per_example_optimization_is_independent_of_the_batch():
  """vmapped batch == each example optimized alone (own Adam state and clipping)."""
  r = runner()
  model = r.gen.merge(r.params)
  batch, _ = batch_for(r)
  src = jnp.asarray(sp.STAGE_SOURCES["stage1"])
  # eps 1.0: updates linear in the gradient (see test_sharded_batch_equals_unsharded)
  opt = sp.ContentOptimizer.create(steps=2, lr=1.0, clip_norm=0.1, eps=1.0)
  options = sp.LossOptions(scheduled_sampling=0.5)
  loss_fn = lambda c, bt, keys, i: sp.batch_losses(model, r.parts, c, src, bt["targets"],
                                                   bt["mask"], options=options, keys_B=keys)
  c0 = jax.random.normal(jax.random.key(2), (4, 2, 2, r.dim))
  active = jnp.ones((4, 2), bool)
  run = jax.jit(lambda c, b, a: opt.run(loss_fn, c, opt.init(c), b, a, jax.random.key(0))[0])
  together = run(c0, batch, active)
  alone = [run(c0[i:i + 1], jax.tree.map(lambda x: x[i:i + 1], batch), active[i:i + 1])
           for i in range(4)]
  np.testing.assert_allclose(together, jnp.concatenate(alone), **TOL)


def test_sequence_losses_equal_full_forward_reference():
  """CE from logits at target positions only == CE read off a full token forward."""
  t = tiny("gemma3")
  model = t.model
  ids = jax.random.randint(jax.random.key(0), (3, 12), 4, 300)
  plen = jnp.asarray([5, 7, 4])
  tgt = jax.random.randint(jax.random.key(1), (3, 5), 4, 300)
  mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], jnp.float32)
  _, ce = jax.jit(lambda: sp.sequence_losses(model, model.embed(ids), plen, tgt, mask))()
  full = jax.jit(lambda seq: jax.nn.log_softmax(model.logits(model(seq)[0])[0], -1))
  for n in range(3):
    seq = jnp.concatenate([ids[n, :plen[n]], tgt[n]])
    logp = full(jnp.pad(seq, (0, 17 - len(seq)))[None])      # right padding is causal-invisible
    k = int(mask[n].sum())
    want = -np.mean([logp[plen[n] - 1 + j, tgt[n, j]] for j in range(k)])
    np.testing.assert_allclose(ce[n], want, **TOL)


def test_loss_options_reduce_to_cross_entropy_when_off():
  t = tiny()
  model = t.model
  prompt = jax.random.normal(jax.random.key(0), (2, 4, 64))
  tgt = jax.random.randint(jax.random.key(1), (2, 5), 4, 300)
  mask = jnp.ones((2, 5))
  plen = jnp.asarray([4, 4])

  @functools.partial(jax.jit, static_argnums=0)
  def losses(options, progress):
    return sp.sequence_losses(model, prompt, plen, tgt, mask, options=options,
                              key=jax.random.key(0), progress=progress)
  base, ce = losses(sp.LossOptions(), 1.0)
  np.testing.assert_allclose(base, ce)
  sem, ce2 = losses(sp.LossOptions(semantic_weight=0.5), 1.0)
  np.testing.assert_allclose(ce2, ce, **TOL)
  assert np.all(np.isfinite(sem)) and not np.allclose(sem, ce)
  ss = sp.LossOptions(scheduled_sampling=1.0)
  np.testing.assert_allclose(losses(ss, 0.0)[0], ce, **TOL)   # probability 0 at ramp start
  assert not np.allclose(losses(ss, 1.0)[0], ce)


# --- convergence --------------------------------------------------------------------------------

def test_convergence_rule_on_hand_made_numbers():
  rule = sp.ConvergenceRule(random_ratio=0.3, context_ratio=2.0, part_ratio=2.0, part_floor=0.05)
  inf = np.inf
  joint, alone = jnp.asarray([0, 0]), jnp.asarray([0, 1])
  f = lambda ce, rnd, ctx, part, src: np.asarray(
      rule(jnp.asarray(ce, jnp.float32), jnp.asarray(rnd, jnp.float32),
           jnp.asarray(ctx, jnp.float32), jnp.asarray(part, jnp.float32), src))
  # joint loss 1.0 < 0.3 x random 4.0 = 1.2 (context 0.1 far away); parts within 2x
  assert f([1.0, 1.0], [4.0, 4.0], [0.1, 0.1], [0.6, 0.6], joint)[0]
  # 1.3 > 1.2 and 1.3 > 2 x 0.6 = 1.2: not converged
  assert not f([1.3, 1.3], [4.0, 4.0], [0.6, 0.6], [1.0, 1.0], joint)[0]
  # the context clause alone: 1.3 < 2 x 0.7 = 1.4
  assert f([1.3, 1.3], [4.0, 4.0], [0.7, 0.7], [1.0, 1.0], joint)[0]
  # total fine but A gave up: A 1.5 > 2 x its stage-1 loss 0.5
  assert not f([0.1, 1.5], [4.0, 4.0], [0.1, 0.1], [0.1, 0.5], joint)[0]
  # part floor: stage-1 loss 0.001 -> floor 0.05, 0.09 <= 0.1 passes
  assert f([0.09, 0.09], [4.0, 4.0], [0.1, 0.1], [0.001, 0.001], joint)[0]
  # stage 1: each content judged on its own target; no part baselines (inf)
  np.testing.assert_array_equal(f([1.0, 2.0], [4.0, 4.0], [5.0, 0.5], [inf, inf], alone),
                                [True, False])
  # exactly at the threshold is not below it
  assert not f([1.2, 1.2], [4.0, 4.0], [0.1, 0.1], [inf, inf], joint)[0]
  # a content no target reads is trivially converged
  assert f([1.0, 1.0], [4.0, 4.0], [5.0, 5.0], [inf, inf], joint)[1]


# --- restarts -----------------------------------------------------------------------------------

def test_restarts_reinit_only_unconverged_and_do_not_recompile():
  r = runner(1, 1.0)   # shares its compiled round with test_sharded_batch_equals_unsharded
  batch, _ = batch_for(r)
  b, c, k, d = 4, 2, r.config.stm.num_slots, r.dim
  # sharded like run_stage does it, so the compiled round is shared with the sharding test
  batch = r.shard(dict(batch, part_ce=np.full((b, 2), np.inf, np.float32)))
  src = jnp.asarray(sp.STAGE_SOURCES["stage1"])
  prev = jax.random.normal(jax.random.key(5), (b, c, k, d))
  converged = jnp.asarray([[True, True], [False, True], [True, False], [False, False]])
  ce = jnp.where(converged, 0.5, jnp.inf)   # stage 1: target s is read by content s
  state = r.shard(sp.StageState(prev, ce, converged, jnp.ones((b, c), jnp.int32)))
  key = jax.random.key(0)
  before = r.traces["round"]
  new, curve, _, restarted = r._round(r.params, r.parts, state, batch, src, jnp.int32(1), key)
  np.testing.assert_array_equal(restarted, ~converged)
  np.testing.assert_array_equal(new.attempts_BxC, 1 + (~converged).astype(int))
  conv = np.asarray(converged)
  np.testing.assert_array_equal(np.asarray(new.contents_BxCxKxD)[conv], np.asarray(prev)[conv])
  # unconverged contents were re-initialised and optimized
  moved = np.abs(np.asarray(new.contents_BxCxKxD) - np.asarray(prev)).max(axis=(-1, -2))
  assert np.all(moved[~conv] > 0)
  np.testing.assert_array_equal(np.asarray(new.ce_BxS)[conv], 0.5)
  # a second and third round (new round index -> fresh keys) reuse the compiled function
  state2 = r.shard(sp.StageState(
      prev, jnp.full((b, 2), jnp.inf), jnp.zeros((b, c), bool), jnp.zeros((b, c), jnp.int32)))
  a, *_ = r._round(r.params, r.parts, state2, batch, src, jnp.int32(2), key)
  a2, *_ = r._round(r.params, r.parts, state2, batch, src, jnp.int32(2), key)
  bb, *_ = r._round(r.params, r.parts, state2, batch, src, jnp.int32(3), key)
  np.testing.assert_array_equal(a.contents_BxCxKxD, a2.contents_BxCxKxD)
  assert not np.allclose(a.contents_BxCxKxD, bb.contents_BxCxKxD)
  # the joint stage goes through the same compiled function; its unread content 1 stays put
  j, *_ = r._round(r.params, r.parts, state2, batch, jnp.asarray(sp.STAGE_SOURCES["stage2"]),
                   jnp.int32(0), key)
  np.testing.assert_array_equal(j.contents_BxCxKxD[:, 1], prev[:, 1])
  np.testing.assert_array_equal(j.attempts_BxC[:, 1], 0)
  assert r.traces["round"] - before <= 1


# --- sharding -----------------------------------------------------------------------------------

def test_sharded_batch_equals_unsharded():
  """The same rounds with the batch split over 4 devices. Adam's eps is large here so updates
  are linear in the gradient: with eps 1e-8, g / sqrt(v) turns rounding noise in near-zero
  gradient components (different but equally valid summation orders of the partitioned
  program) into O(lr) steps, and trajectories part at float32 rounding, not at a bug."""
  assert jax.device_count() >= 4
  one, four = runner(1, 1.0), runner(4, 1.0)
  batch, enc = batch_for(one)
  part = np.full((4, 2), np.inf, np.float32)
  s1, c1, _ = one.run_stage("stage1", batch, part, log=lambda *_: None)
  s4, c4, _ = four.run_stage("stage1", batch, part, log=lambda *_: None)
  for k in s1:
    np.testing.assert_allclose(s1[k], s4[k], **TOL)
  np.testing.assert_allclose(c1, c4, **TOL)
  sharded = four.shard(batch)
  assert len(sharded["targets"].sharding.device_set) == 4
