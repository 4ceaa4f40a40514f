"""The bypass config end to end on its tiny variant: trains, and results.json carries EM beyond
and inside the local context, the held-out LM losses of the model and of its no-memory
reference decoder; the reference never reads memory and shares no parameter with the model."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from memjax.core import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(arg):
  spec = importlib.util.spec_from_file_location("hrsa_bypass_cfg",
                                                os.path.join(ROOT, "configs/hrsa_bypass.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def test_full_config_is_the_issue_regime():
  c = _config(None)
  assert c.task.doc_len >= 2048 and c.task.tail >= 128 and c.model.ctx >= c.task.tail + 4
  assert c.task.retrieval_fraction == 0.2 and c.task.inside_fraction == 0.25
  assert c.task.adversarial_in_tail and c.task.lm_after_doc and c.model.lm_reference
  assert c.model.slots[-1] * c.task.chunk == c.task.doc_len     # one M2 slot per chunk


def test_recipe_stages_end_in_the_issue_regime_with_the_same_params():
  """`:lock` trains on the full document by its last stage, `:mix` is the issue's regime, and
  `mix` can warm-start from `lock` (train.init_from needs parameters of the same shapes)."""
  lock, mix = _config("lock"), _config("mix")
  for c in (lock, mix):
    loop.validate(c)
  assert lock.task.length_curriculum[-1][1] == lock.task.doc_len == mix.task.doc_len
  full = _config(None)
  assert mix.task.to_dict() == full.task.to_dict()
  assert {k: v for k, v in mix.model.items() if k != "write_slots"} == \
      {k: v for k, v in full.model.items() if k != "write_slots"}
  shapes = []
  for c in (lock, mix):
    _, system, _ = loop.build(c)
    shapes.append(jax.tree.map(lambda x: (x.shape, x.dtype),
                               jax.eval_shape(system.init, jax.random.key(0))))
  assert shapes[0] == shapes[1]


@pytest.mark.slow   # ~1-2 min of CPU: compiles the train step and five eval functions
def test_tiny_bypass_run_reports_beyond_inside_and_lm_reference(tmp_path):
  c = _config("tiny")
  c.train.steps = 10
  res = loop.train(c, str(tmp_path), progress=False)
  params = res.pop("state").params
  saved = json.load(open(tmp_path / "results.json"))
  for k in ("accuracy_beyond", "accuracy_beyond_memory_zeroed", "accuracy_beyond_memory_shuffled",
            "accuracy_inside", "accuracy_adversarial_beyond", "delta_zero_beyond",
            "loss_lm_heldout", "loss_lm_heldout_reference", "lm_loss_ratio_to_reference"):
    assert saved[k] is not None and np.isfinite(saved[k]), k
  assert 0 < saved["loss_lm_heldout_reference"] < saved["loss_lm_uniform"] + 1.0
  # where the answers beyond the local context are lost: the same split, the same answers
  assert saved["read_path_beyond_answers"] == pytest.approx(saved["accuracy_beyond"])
  for k in ("holds", "attends", "mass", "holds_and_attends", "answers_given_holds_and_attends"):
    assert 0 <= saved[f"read_path_beyond_{k}"] <= 1, k
  # the reference is its own decoder with its own embedding
  ref = jax.tree.leaves(params["reference"])
  model = [x for k, v in params.items() if k != "reference" for x in jax.tree.leaves(v)]
  assert ref and not any(r is m for r in ref for m in model)
  hist = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert all("loss_lm_reference" in h for h in hist)


def test_write_loss_leaves_out_a_curriculum_s_pad():
  """With a length curriculum's PAD prefix the write loss is the mean over the text positions
  only (the empty slots would otherwise dilute it by the padded share)."""
  import jax.numpy as jnp
  from flax import nnx
  from memjax.core import losses
  from memjax.hrsa import tasks as ht
  from memjax.hrsa.diffusion import regions
  c = _config("tiny")
  c.model.write_slots = 0
  c.task.length_curriculum = ((0, 96), (1000, 128))
  task, system = loop.build(c)[:2]
  params = system.init(jax.random.key(1))
  b = next(iter(task.batches("train", 8, 0)))
  assert (b["doc"] == ht.PAD).any()
  rng = jax.random.key(2)
  _, (metrics, _, _) = jax.jit(system.loss)(params, b, (), system.init_aux(), rng)

  @jax.jit
  def text_only(p, doc):
    model = nnx.merge(system.graphdef, p)
    memory, _ = model.ingest(doc, jax.random.split(rng, 3)[0])
    s2 = c.model.slots[-1]
    reg = regions(doc, s2, fill=-1)
    logits = model.write_head(model.decoder.memory_tokens(memory)[:, -s2:], reg.shape[-1],
                              model.embed)
    nll = losses.token_nll(logits, jnp.maximum(reg, 0))
    text = (reg >= 0) & (reg != ht.PAD)
    return jnp.where(text, nll, 0.0).sum() / text.sum()

  want = float(text_only(params, jnp.asarray(b["doc"])))
  assert float(metrics["loss_write"]) == pytest.approx(want, rel=1e-5)
