"""Clipping apart: a subtree trained beside the model (HRSA-TRM's LM reference) is clipped on
its own norm; everything else is clipped exactly as optax.clip_by_global_norm clips it."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax.core import optim


def _tree(seed, reference_scale=None, model_scale=1.0):
  k = jax.random.split(jax.random.key(seed), 3)
  t = {"encoder": {"w": model_scale * jax.random.normal(k[0], (4, 3))},
       "decoder": [model_scale * jax.random.normal(k[1], (5,))]}
  if reference_scale is not None:
    t["reference"] = {"w": reference_scale * jax.random.normal(k[2], (3, 3))}
  return t


def _clip(tx, updates):
  return tx.update(updates, tx.init(updates))[0]


def test_without_a_reference_it_is_clip_by_global_norm_bit_for_bit():
  ours, theirs = optim.clip_by_global_norm_apart(1.0), optax.clip_by_global_norm(1.0)
  for scale in (0.01, 10.0):
    u = _tree(0, model_scale=scale)
    for a, b in zip(jax.tree.leaves(_clip(ours, u)), jax.tree.leaves(_clip(theirs, u))):
      np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(ours.init(u)) == jax.tree.structure(theirs.init(u))


def test_the_reference_is_clipped_on_its_own_norm():
  tx, base = optim.clip_by_global_norm_apart(1.0), optax.clip_by_global_norm(1.0)
  ref_alone = None
  for model_scale in (0.01, 1.0, 100.0):   # the model's gradients never scale the reference's
    u = _tree(1, reference_scale=0.3, model_scale=model_scale)
    out = _clip(tx, u)
    if ref_alone is None:
      ref_alone = _clip(base, {"reference": u["reference"]})["reference"]
    np.testing.assert_array_equal(out["reference"]["w"], ref_alone["w"])
    model = {k: v for k, v in u.items() if k != "reference"}
    want = _clip(base, model)
    for a, b in zip(jax.tree.leaves({k: v for k, v in out.items() if k != "reference"}),
                    jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-6)
  # under one global norm (the old chain) the reference's step shrinks with the model's norm
  coupled = _clip(base, _tree(1, reference_scale=0.3, model_scale=100.0))["reference"]["w"]
  assert float(jnp.linalg.norm(coupled)) < 0.05 * float(jnp.linalg.norm(ref_alone["w"]))


def test_the_optimizer_keeps_its_state_structure():
  """Checkpoints written before clipping apart still restore."""
  t = optim.make_optimizer(type("T", (), dict(lr=1e-3, warmup_steps=1, steps=10, clip_norm=1.0,
                                             weight_decay=0.0, get=lambda self, k, d=None: d))())
  old = optax.chain(optax.clip_by_global_norm(1.0),          # the chain before clipping apart
                    optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 1, 10, 1e-4)))
  p = _tree(2, reference_scale=1.0)
  assert jax.tree.structure(t.init(p)) == jax.tree.structure(old.init(p))
