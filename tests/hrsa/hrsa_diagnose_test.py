"""The read-path diagnostic (memjax.hrsa.diagnose): the fact's slot is where the task wrote the
fact, `answers` is the yardstick's exact match, `holds` is the write head's reading of that slot
as the write loss computes it, and the summary's conditional rates count what they say."""
import importlib.util
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from memjax.core import loop
from memjax.hrsa import diagnose
from memjax.hrsa import tasks as ht
from memjax.hrsa.diffusion import regions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(arg="tiny"):
  spec = importlib.util.spec_from_file_location("hrsa_bypass_cfg",
                                                os.path.join(ROOT, "configs/hrsa_bypass.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def _batch(task, split, step=0, bs=16):
  return next(itertools.islice(iter(task.batches(split, bs, 0)), step, None))


@pytest.mark.parametrize("split,curriculum", [("eval_beyond", ()), ("eval_inside", ()),
                                              ("train", ((0, 96), (5, 128)))])
def test_fact_slot_is_where_the_task_wrote_the_fact(split, curriculum):
  c = _config()
  c.task.length_curriculum = curriculum
  c.task.retrieval_warmup_steps = 100   # train batches all retrieval
  task, _ = loop.build(c)[:2]
  s2 = c.model.slots[-1]
  b = _batch(task, split)
  slot, off = diagnose.fact_slot(b["src_start"], b["doc"].shape[1], s2)
  reg = np.asarray(regions(jnp.asarray(b["doc"]), s2))
  i = np.arange(len(slot))
  retr = b["is_retrieval"]
  assert retr.any()
  assert (reg[i, slot, off][retr] == ht.FACT).all()
  assert (reg[i, slot, off + 3][retr] == b["answer"][retr]).all()


def test_read_path_equals_the_yardstick_and_the_write_loss_path():
  c = _config()
  task, system = loop.build(c)[:2]
  params = system.init(jax.random.key(1))
  b = _batch(task, "eval_beyond")
  rows = jax.jit(lambda p, x: diagnose.read_path(system.graphdef, p, x))(
      params, {k: b[k] for k in ("doc", "tokens", "src_start", "answer")})
  # answers: the yardstick's exact match on the same batch
  out = jax.jit(lambda p, x: system.answer(p, x, system.ingest(p, x)))(params, b)
  assert int(np.asarray(rows["answers"]).sum()) == int(out["correct"])
  assert int(out["count"]) == len(b["answer"])
  # holds: the write head over every M2 slot, as the write loss runs it, at the fact's value
  s2 = c.model.slots[-1]

  @jax.jit
  def rebuilt(p, doc):
    model = nnx.merge(system.graphdef, p)
    memory, _ = model.ingest(doc, jax.random.key(0))
    slots = model.decoder.memory_tokens(memory)[:, -s2:]
    return model.write_head(slots, regions(doc, s2).shape[2], model.embed)

  logits = np.asarray(rebuilt(params, jnp.asarray(b["doc"])))
  slot, off = diagnose.fact_slot(b["src_start"], b["doc"].shape[1], s2)
  i = np.arange(len(slot))
  want = logits[i, slot, off + 3].argmax(-1) == b["answer"]
  np.testing.assert_array_equal(np.asarray(rows["holds"]), want)
  mass = np.asarray(rows["mass"])
  assert ((mass >= 0) & (mass <= 1)).all()


def test_summary_counts_kept_examples_and_conditions():
  rows = {"holds": np.array([1, 1, 0, 1, 1], bool), "attends": np.array([1, 0, 1, 1, 1], bool),
          "answers": np.array([1, 0, 0, 0, 0], bool), "mass": np.array([.5, .1, .2, .9, .9])}
  keep = np.array([1, 1, 1, 1, 0], bool)
  s = diagnose.summarise(rows, keep)
  assert s["holds"] == pytest.approx(3 / 4) and s["attends"] == pytest.approx(3 / 4)
  assert s["answers"] == pytest.approx(1 / 4) and s["mass"] == pytest.approx(1.7 / 4)
  assert s["holds_and_attends"] == pytest.approx(2 / 4)
  assert s["answers_given_holds_and_attends"] == pytest.approx(1 / 2)


def test_read_path_needs_the_write_head():
  c = _config()
  c.model.write_head = False
  c.model.write_loss = 0.0
  task, system = loop.build(c)[:2]
  params = system.init(jax.random.key(1))
  b = _batch(task, "eval_beyond")
  with pytest.raises(ValueError, match="write head"):
    diagnose.read_path(system.graphdef, params, b)
