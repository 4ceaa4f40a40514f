"""The code behind the HRRM figures: Titans yardstick modes on a trained model,
accuracy_by_h_cycles against a hand-built recurrence, ACT's Q-head and halting."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import hrm_reasoning
from configs import titans_recall
from memjax.core import loop
from memjax.core import tasks
from memjax.hrrm import system as hrrm_systems


def test_titans_yardstick_modes_on_a_model_trained_for_seconds(tmp_path):
  """One key-value pair, asked two chunks later, on held-out bindings: the trained memory
  answers, the zeroed and shuffled memories do not (the figures' code path, end to end)."""
  c = titans_recall.get_config("tiny")
  c.task.update(num_keys=2, num_values=8, num_pairs=1, num_queries=1, num_filler=2)
  # 160 steps: held-out accuracy 0.996 / 0.734 / 0.996 for train.seed 0 / 1 / 2 (shuffled
  # 0.25 / 0.16 / 0.25): the bounds below hold for all three
  c.train.update(steps=160, steps_per_call=10, lr=3e-3, batch_size=32, checkpoint_every=0,
                 log_every=80, eval_batches=4, eval_batch_size=64)
  r = loop.train(c, str(tmp_path), progress=False)
  assert r["accuracy"] >= 0.5, r
  # zeroed / no memory: the answer's value was never bound to its key in training, so a
  # model without the memory scores (at most) chance; shuffled: another example's value
  # (right only when both drew the same binding: 2 keys x 2 held-out values)
  assert r["accuracy_memory_zeroed"] <= r["chance"] and r["accuracy_no_memory"] <= r["chance"]
  assert r["accuracy_memory_shuffled"] <= 0.4 and r["accuracy"] - r["accuracy_memory_shuffled"] > 0.3
  assert r["delta_zero"] > 2.0


def _doubling_run(vocab):
  """A hand-built HRM: each H cycle is one pointer-doubling step p <- p[p]."""
  def run(params, inputs, *, H, segments):
    del params
    p = inputs
    for _ in range(H):
      p = jnp.take_along_axis(p, p, 1)
    return {"logits": jnp.broadcast_to(jax.nn.one_hot(p, vocab) * 10.0,
                                       (segments,) + p.shape + (vocab,))}
  return run


def _depths(parent):
  """Hops from each node to its root."""
  d = np.zeros_like(parent)
  for i in range(parent.size):
    j = i
    while parent[j] != j:
      j, d[i] = parent[j], d[i] + 1
  return d


def test_accuracy_by_h_cycles_on_a_hand_built_recurrence():
  c = hrm_reasoning.get_config()
  c.model.eval_h_cycles = [1, 2, 3, 4, 6]
  task = tasks.make_task(c.task)
  system = hrrm_systems.make_hrm_system(c, task, run=_doubling_run(task.vocab_size))
  batches = list(itertools.islice(iter(task.batches("eval", 64, 0)), 4))
  res = system.extra_results(None, iter(batches))
  depth = np.stack([_depths(p) for b in batches for p in b["inputs"]])       # N x nodes
  for h, acc in res["accuracy_by_h_cycles"].items():
    # after h doublings a node sits 2^h hops up: right when it is at most that deep
    assert acc == np.mean((depth <= 2 ** int(h)).all(-1)), (h, acc)
    # float32 division in the system: equal to float32 precision
    np.testing.assert_allclose(res["token_accuracy_by_h_cycles"][h],
                               np.mean(depth <= 2 ** int(h)), rtol=1e-6)
  accs = [res["accuracy_by_h_cycles"][str(h)] for h in c.model.eval_h_cycles]
  assert accs == sorted(accs) and accs[0] < 0.5 and accs[-2:] == [1.0, 1.0]


@pytest.fixture(scope="module")
def act():
  c = hrm_reasoning.get_config("tiny")
  c.model.update(act=True, segments=3, act_explore=0.0)
  task = tasks.make_task(c.task)
  system = hrrm_systems.make_hrm_system(c, task)
  params = system.init(jax.random.key(0))
  batch = {k: jnp.asarray(v) for k, v in next(iter(task.batches("train", 8, 0))).items()}
  return c, task, system, params, batch


def _halting(system, params, halt_bias):
  """The same weights with a Q-head that always halts (bias > 0) or never does (< 0)."""
  model = nnx.merge(system.graphdef, params)
  model.q_head.kernel.value = jnp.zeros_like(model.q_head.kernel.value)
  model.q_head.bias.value = jnp.array([halt_bias, -halt_bias], jnp.float32)
  return nnx.split(model, nnx.Param)[1]


def test_act_q_head_receives_gradient(act):
  _, _, system, params, batch = act
  grads = jax.jit(jax.grad(lambda p: system.loss(p, batch, (), (), jax.random.key(1))[0]))(
      params)
  g = nnx.to_pure_dict(grads)["q_head"]
  assert float(jnp.abs(g["kernel"]).max()) > 0 and float(jnp.abs(g["bias"]).max()) > 0


def _plain(c, task, params, segments):
  """The same weights without ACT: a model that always answers after `segments` segments."""
  c = c.copy_and_resolve_references()
  c.model.update(act=False, segments=segments)
  system = hrrm_systems.make_hrm_system(c, task)
  kept = {k: v for k, v in nnx.to_pure_dict(params).items() if k != "q_head"}
  return system, nnx.state(nnx.merge(system.graphdef, kept), nnx.Param)


def test_act_halting_decides_which_segment_answers(act):
  c, task, system, params, batch = act
  loss, answer = jax.jit(system.loss), jax.jit(system.answer)
  plain = {}
  for n in (1, 3):
    s, p = _plain(c, task, params, n)
    plain[n] = float(jax.jit(s.answer)(p, batch, None)["loss"])
  assert abs(plain[1] - plain[3]) > 1e-3    # the segments differ, so the choice shows
  for bias, n in ((5.0, 1), (-5.0, 3)):
    p = _halting(system, params, bias)
    _, (metrics, _, _) = loss(p, batch, (), (), jax.random.key(1))
    assert float(metrics["act_segments"]) == n
    # the answer is the halting segment's: the first when it halts at once, else the cap's
    # (float32, the same ops compiled in two programs)
    np.testing.assert_allclose(float(answer(p, batch, None)["loss"]), plain[n], rtol=1e-6)
