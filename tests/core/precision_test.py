"""bf16 mixed precision (train.compute_dtype) and block rematerialisation (model.remat).

Tolerances come from the dtype (DESIGN.md): u = 2**-8 is bfloat16's unit roundoff (8
significant bits, round to nearest), so each rounding of an activation to bf16 moves it by at
most u relative. R counts the roundings in sequence on the longest path from the params to
the logits of the tiny THEN model (1 layer), one per op whose output is stored in bf16:
  embedding lookup (param cast) 1, token shift (product, sum) 2, norm 1, q/k/v weight cast
  and projection 2, attention probs cast 1, attention output cast 1, o weight and
  projection 2, residual 1, norm 1, gate weight and projection 2, silu 1, gate*up 1, down
  weight and projection 2, residual 1, final norm 1, head weight and logits 2   -> R = 23.
Worst case (errors add linearly, no cancellation): |logits_bf16 - logits_f32| <= R u max|z|.
The loss is log-sum-exp(z) - z_target, whose gradient in z has L1 norm <= 2, so a loss moves
by at most 2 R u max|z|.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hrsa_retrieval
from configs import then_recall
from flax import nnx
from memjax.core import loop
from memjax.core import precision
from memjax.core import tasks
from memjax.core.config import ConfigError
from memjax.hrsa import system as hrsa_system
from memjax.hrsa.model import HRSATRM
from memjax.then.model import ThenModel

U = 2.0 ** -8      # bfloat16 unit roundoff
R_THEN_TINY = 23   # roundings in sequence, params -> logits (module docstring)


def _then_config(**train):
  c = then_recall.get_config("tiny")
  c.train.update(train)
  return c


def test_float32_switch_is_the_unchanged_loss_function():
  # The f32 path is the same Python function, hence the same traced program as before the switch.
  f = lambda *a: a
  assert precision.with_compute_dtype(f, "float32") is f


def test_unknown_compute_dtype_is_a_one_line_config_error():
  with pytest.raises(ConfigError, match=r"^train.compute_dtype: unknown value 'float16'"):
    loop.validate(_then_config(compute_dtype="float16"))


def _then_parts():
  c = _then_config()
  task = tasks.make_task(c.task)
  then = ThenModel(c, task.vocab_size, task.segment_len)
  batch = next(iter(task.batches("train", c.train.batch_size, 0)))
  return then, then.init_params(jax.random.key(0)), jnp.asarray(batch["inputs"])


def test_bfloat16_forward_is_within_the_rounding_bound_and_really_bf16():
  then, params, tokens = _then_parts()
  b = tokens.shape[0]
  run = jax.jit(lambda p, s: then.run(p, s, tokens)[0])
  want = run(params, then.init_state(b))
  bf = jnp.bfloat16
  got = run(precision.cast_floats(params, bf), precision.cast_floats(then.init_state(b), bf))
  assert got.dtype == bf          # the logits were computed in bf16, not upcast on the way
  err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want)))
  bound = R_THEN_TINY * U * float(jnp.max(jnp.abs(want)))
  assert 0 < err <= bound, (err, bound)


def _hrsa_config():
  c = hrsa_retrieval.get_config("tiny")
  c.model.grad_split = False   # its extra backward pass only doubles the tracing time
  return c


@pytest.mark.parametrize("config", [_then_config, _hrsa_config], ids=["then", "hrsa_trm"])
def test_bfloat16_step_does_its_matmuls_in_bfloat16(config):
  """The jaxpr of loss + gradient: FLOPs of dot_generals with both operands bf16 (tracing only).
  The rest are the f32 softmax statistics' backward (f32 cotangent x bf16 operand)."""
  c = config()
  task, system, tx = loop.build(c)
  state = loop.init_state(c, system, tx)
  batch = jax.tree.map(jnp.asarray, next(iter(task.batches("train", c.train.batch_size, 0))))
  for dt, want_bf16 in (("float32", False), ("bfloat16", True)):
    lf = precision.with_compute_dtype(system.loss, dt)
    grad = jax.grad(lambda p: lf(p, batch, state.memory, state.aux, jax.random.key(0))[0])
    flops = precision.matmul_flops_by_dtype(grad, state.params)
    frac = flops.get("bfloat16", 0.0) / sum(flops.values())
    assert (frac >= 0.85) if want_bf16 else (frac == 0.0), (dt, flops)


def _train_losses(tmp_path, dtype, steps=40):
  c = _then_config(steps=steps, log_every=5, checkpoint_every=0, warmup_steps=5,
                   compute_dtype=dtype)
  wd = str(tmp_path / dtype)
  state = loop.train(c, wd, progress=False, evaluate_at_end=False)["state"]
  with open(f"{wd}/metrics.jsonl") as f:
    return np.array([json.loads(line)["loss_mean"] for line in f]), state


@pytest.mark.slow   # ~34 s on the 2-core CPU; .ci/run's slow line runs it by name
def test_bfloat16_training_tracks_float32(tmp_path):
  """40 steps of tiny THEN in bf16 and in f32 from the same init and batches: every logged
  5-step mean loss within 2 R u max|z| (module docstring), with max|z| the largest logit
  of the f32 model at the start and at the end, on the first training batch.

  That is the bound for one forward pass; the test also checks the assumption that a few
  dozen Adam steps (warmup, clipped gradients) do not amplify the per-step rounding beyond it.
  """
  f32, state = _train_losses(tmp_path, "float32")
  bf16, _ = _train_losses(tmp_path, "bfloat16")
  then, params0, tokens = _then_parts()
  zmax = max(float(jnp.max(jnp.abs(then.run(p, then.init_state(tokens.shape[0]), tokens)[0])))
             for p in (params0, state.params))
  tol = 2 * R_THEN_TINY * U * zmax
  assert f32[-1] < f32[0] - 0.5, f"the f32 run did not learn: {f32}"   # a curve worth tracking
  assert np.max(np.abs(bf16 - f32)) <= tol, (bf16 - f32, tol)


def _fast(fn, *args):
  """jit with XLA's backend optimisation off: compile time is these tests' main cost on CPU."""
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


def _then_remat_fn(remat):
  c = _then_config()
  c.model.remat = remat
  task, system, tx = loop.build(c)
  state = loop.init_state(c, system, tx)
  batch = jax.tree.map(jnp.asarray, next(iter(task.batches("train", c.train.batch_size, 0))))
  return lambda p: system.loss(p, batch, state.memory, state.aux, jax.random.key(1))[0], state.params


def _hrsa_remat_fn(remat):
  """The HRSA-TRM model itself (encoder, cascade, decoder), not its system's several losses:
  the remat sits in the encoder and decoder blocks."""
  c = hrsa_retrieval.get_config("tiny")
  c.model.remat = remat
  c.model.enc_layers = 2      # more than one block, so the blocks chain under remat
  mc = hrsa_system.model_config(c, 32)
  model = HRSATRM(mc, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  doc = jax.random.randint(jax.random.key(2), (2, 64), 0, 32)
  tokens = jax.random.randint(jax.random.key(3), (2, 12), 0, 32)

  def fn(p):
    logits, memory, _, _ = nnx.merge(graphdef, p)(doc, tokens, jax.random.key(4))
    return jnp.mean(logits ** 2) + sum(jnp.mean(m ** 2) for m in memory.levels)

  return fn, params


# HRSA-TRM's compile (diffusion scan, TRM inside) is most of this file's time: slow-marked.
@pytest.mark.parametrize("build", [_then_remat_fn,
                                   pytest.param(_hrsa_remat_fn, marks=pytest.mark.slow)],
                         ids=["then", "hrsa_trm"])
def test_remat_gives_the_same_loss_and_gradients(build):
  """Rematerialised blocks recompute the same values; XLA may fuse the recomputation
  differently, so float32 reassociation (a few ulps per op) is allowed: 1e-5 relative."""
  out = {}
  for remat in (False, True):
    fn, params = build(remat)
    text = str(jax.make_jaxpr(jax.grad(fn))(params))
    assert ("remat" in text or "checkpoint" in text) == remat   # the switch reaches the blocks
    out[remat] = _fast(jax.value_and_grad(fn), params)
  (l0, g0), (l1, g1) = out[False], out[True]
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(a))) + 1e-12)
