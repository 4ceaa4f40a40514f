"""Systems (memjax.core.system.System) for the HRRM family.

  hrm            HRM core on a multi-step task (pointer_roots); extra: accuracy_by_h_cycles
  hrrm_planner   Planner: LM + ControllerHead (lambda_ctrl); accuracy = control-token detection;
                 extra: accuracy_ngram{1,2,3}, lookup tables on the last 1-3 tokens (baselines.py)
  hrrm_reasoner  Reasoner: scratchpad-supervised LM; extra: accuracy of greedy generation and
                 of self-consistency over k samples
  hrrm_memory    Memory: Titans MAC on retrieval episodes; the memory-use yardstick

The HRM losses sum a loss per deep-supervision segment (carry detached between
segments); with model.act, HRM's Q-head learns halt/continue and later segments
of halted examples carry no loss.
"""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from memjax.core import config as cfg
from memjax.core import losses
from memjax.hrrm import baselines
from memjax.hrrm import model as hrrm
from memjax.recurrence.hrm import act_targets
from memjax.recurrence.hrm import deep_supervision
from memjax.core.system import System


def validate(config) -> None:
  m = config.model
  hrrm.validate_model(m)
  root = config
  if m.name == "hrrm_memory":
    seg = config.task.get("segment_len")
    cfg.require(seg is None or seg == m.chunk, "model.chunk",
                f"must equal task.segment_len={seg}: the attention window is one segment")
  else:
    for h in m.get("eval_h_cycles", []):
      cfg.require(isinstance(h, int) and h >= 1, "model.eval_h_cycles",
                  f"H cycles must be integers >= 1, got {h!r}")
    if m.act:
      cfg.require(m.segments >= 2, "model.segments", "ACT needs a cap of >= 2 segments")
  del root


def _split(model):
  return nnx.split(model, nnx.Param)


def _init_fn(m, vocab):
  def init(rng):
    return _split(hrrm.build(m, vocab, rngs=nnx.Rngs(rng)))[1]
  return init


# --------------------------------------------------------------------------- HRM family

def _weights(batch):
  if "weight" in batch:
    return batch["weight"].astype(jnp.float32)
  return (batch["answer"] > 0).astype(jnp.float32)


def make_hrm_system(config, task, run=None) -> System:
  """`run(params, inputs, *, H, segments) -> outputs stacked over segments` defaults to the
  model's; tests pass a hand-built one to check the scoring paths against known answers."""
  m = config.model
  graphdef, _ = _split(nnx.eval_shape(lambda: hrrm.build(m, task.vocab_size)))
  planner = m.name == "hrrm_planner"

  def model_run(params, inputs, *, H, segments):
    model = nnx.merge(graphdef, params)
    x = model.input_embedding(inputs)
    carry = model.init_carry(inputs)
    seg = lambda carry: model.segment(x, carry, H=H, L=m.inner_T, causal=m.causal,
                                      one_step_grad=m.one_step_grad, unroll=m.unroll)
    _, outs = deep_supervision(seg, carry, segments)
    return outs  # each [S, B, ...]

  run = run or model_run

  def per_segment(outs, batch):
    """Per-segment, per-example: loss and exact correctness."""
    w = _weights(batch)
    nll = losses.token_nll(outs["logits"], batch["targets"][None])                 # S x B x T
    lm = (nll * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)              # S x B
    right = (jnp.argmax(outs["logits"], -1) == batch["targets"][None]) | (w[None] == 0)
    correct = right.all(-1)                                           # S x B
    loss = lm
    if planner:
      cn = losses.token_nll(outs["ctrl_logits"], batch["ctrl"][None])
      loss = loss + m.lambda_ctrl * (cn * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)
    return loss, lm, correct

  def loss_fn(params, batch, memory, aux, rng):
    outs = run(params, batch["inputs"], H=m.max_H, segments=m.segments)
    loss_sb, lm_sb, correct_sb = per_segment(outs, batch)
    metrics = {"lm_loss_last": lm_sb[-1].mean(), "exact_last": correct_sb[-1].mean()}
    if m.act:
      q_h, q_c = outs["q_logits"][..., 0], outs["q_logits"][..., 1]   # S x B
      s = q_h.shape[0]
      # HRM: halt when q_halt > q_continue, after a random minimum (exploration), at the cap.
      explore = jax.random.bernoulli(rng, m.get("act_explore", 0.1), q_h.shape[1:])
      min_seg = jnp.where(explore, jax.random.randint(jax.random.fold_in(rng, 1), q_h.shape[1:],
                                                      1, s), 0)
      seg_i = jnp.arange(s)[:, None]
      halt = ((q_h > q_c) & (seg_i >= min_seg)) | (seg_i == s - 1)
      halted_at = jnp.argmax(halt, 0)
      active = (seg_i <= halted_at).astype(jnp.float32)
      t_halt, t_cont = act_targets(q_h, q_c, correct_sb)
      bce = lambda logit, t: optax_bce(logit, t)
      q_loss = bce(q_h, t_halt) + bce(q_c, t_cont) * (seg_i < s - 1)
      loss = ((loss_sb + 0.5 * q_loss) * active).sum() / active.sum()
      metrics["act_segments"] = (halted_at + 1).mean()
    else:
      loss = loss_sb.mean()
    if planner:
      metrics["ctrl_accuracy"] = _ctrl_counts(outs["ctrl_logits"][-1], batch)[0] / jnp.maximum(
          _ctrl_counts(outs["ctrl_logits"][-1], batch)[1], 1.0)
    return loss, (metrics, memory, aux)

  def final(outs):
    """The answer segment: the last, or with ACT the first that halts."""
    if not m.act:
      return jax.tree.map(lambda a: a[-1], outs)
    q = outs["q_logits"]
    halt = (q[..., 0] > q[..., 1]) | (jnp.arange(q.shape[0]) == q.shape[0] - 1)[:, None]
    idx = jnp.argmax(halt, 0)                                          # B
    return jax.tree.map(lambda a: jnp.take_along_axis(
        a, idx.reshape((1, -1) + (1,) * (a.ndim - 2)), 0)[0], outs)

  def score(params, batch, H=None):
    out = final(run(params, batch["inputs"], H=H or m.max_H, segments=m.segments))
    w = _weights(batch)
    loss = (losses.token_nll(out["logits"], batch["targets"]) * w).sum() / jnp.maximum(w.sum(), 1.0)
    if planner:
      correct, count = _ctrl_counts(out["ctrl_logits"], batch)
    else:
      correct, count = losses.answer_accuracy(out["logits"], batch["targets"],
                                                 batch["answer"], task.max_answers)
    right = (jnp.argmax(out["logits"], -1) == batch["targets"]) & (w > 0)
    return {"correct": correct, "count": count, "loss": loss,
            "token_correct": right.sum(), "token_count": w.sum()}

  def extra_results(params, batches):
    batches = list(batches)
    res = {}
    hs = list(m.get("eval_h_cycles", [])) or sorted({1, m.max_H, 2 * m.max_H})
    by_h, tok_by_h = {}, {}
    for h in hs:
      fn = jax.jit(functools.partial(score, H=h))
      outs = [fn(params, b) for b in batches]
      by_h[str(h)] = float(sum(o["correct"] for o in outs) / sum(o["count"] for o in outs))
      tok_by_h[str(h)] = float(sum(o["token_correct"] for o in outs) /
                               sum(o["token_count"] for o in outs))
    res["accuracy_by_h_cycles"] = by_h
    res["token_accuracy_by_h_cycles"] = tok_by_h
    res["train_h_cycles"] = m.max_H
    res["inner_T"] = m.inner_T
    res["segments"] = m.segments
    if m.name == "hrrm_reasoner":
      res.update(reasoner_generation(run, m, task, params, batches))
    if planner:
      fn = jax.jit(score)
      outs = [fn(params, b) for b in batches]
      res["perplexity"] = float(jnp.exp(sum(o["loss"] for o in outs) / len(outs)))
      res.update(planner_baselines(config, task, batches))
    return res

  def answer(params, batch, memory):
    del memory   # the HRM models carry no memory: the yardstick scores them on accuracy alone
    return score(params, batch)

  return System(init=_init_fn(m, task.vocab_size), loss=loss_fn, answer=answer,
                extra_results=extra_results, graphdef=graphdef)


def planner_baselines(config, task, eval_batches) -> dict:
  """The n-gram baselines beside `chance`: tables fit on the training stream the model saw
  (train.steps batches of the train split), scored with the Planner's metric on the eval
  batches (memjax.hrrm.baselines)."""
  t = config.train
  train = list(itertools.islice(iter(task.batches("train", t.batch_size, t.seed)), t.steps))
  return {f"accuracy_ngram{n}": baselines.ngram_ctrl_accuracy(train, eval_batches, n,
                                                              task.vocab_size)
          for n in (1, 2, 3)}


def optax_bce(logits, targets):
  return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _ctrl_counts(ctrl_logits, batch):
  """Control-token detection: positions where the next token is a control token or the
  head says so; right when the class matches. (correct, count)."""
  pred = jnp.argmax(ctrl_logits, -1)
  valid = _weights(batch) > 0
  scored = valid & ((batch["ctrl"] > 0) | (pred > 0))
  return ((pred == batch["ctrl"]) & scored).sum().astype(jnp.float32), \
      scored.sum().astype(jnp.float32)


# --------------------------------------------------------------------------- Reasoner decoding

def generate(run, m, params, inputs, prompt_len, *, steps: int, rng=None, temperature=0.0):
  """Writes `steps` tokens after each prompt (full recompute per token; tiny models)."""
  b, t = inputs.shape
  pos = jnp.arange(t)
  tokens = jnp.where(pos[None] < prompt_len[:, None], inputs, 0)

  def body(i, tokens):
    logits = run(params, tokens, H=m.max_H, segments=m.segments)["logits"][-1]
    p = prompt_len - 1 + i                                              # B
    lg = jnp.take_along_axis(logits, p[:, None, None], 1)[:, 0]         # B x V
    if temperature > 0:
      nxt = jax.random.categorical(jax.random.fold_in(rng, i), lg / temperature)
    else:
      nxt = jnp.argmax(lg, -1)
    write = (p + 1 < t)
    return jnp.where((pos[None] == (p + 1)[:, None]) & write[:, None], nxt[:, None], tokens)

  return jax.lax.fori_loop(0, steps, body, tokens)


def _parse_answer(tokens, prompt_len, eot_id):
  """Token after the first <EoT> at or after the prompt; -1 when there is none."""
  pos = jnp.arange(tokens.shape[1])
  is_eot = (tokens == eot_id) & (pos[None] >= prompt_len[:, None])
  has = is_eot.any(-1)
  at = jnp.argmax(is_eot, -1)
  ans = jnp.take_along_axis(tokens, jnp.minimum(at + 1, tokens.shape[1] - 1)[:, None], 1)[:, 0]
  return jnp.where(has, ans, -1)


def reasoner_generation(run, m, task, params, batches):
  eot = task.vocab["<EoT>"]
  steps = m.get("gen_steps", 16)
  k = m.self_consistency_k
  temp = m.get("sc_temperature", 0.7)

  @jax.jit
  def one(params, batch, rng):
    gold = jnp.take_along_axis(batch["targets"], jnp.argmax(batch["answer"] > 0, -1)[:, None],
                               1)[:, 0]
    greedy = _parse_answer(generate(run, m, params, batch["inputs"], batch["prompt_len"],
                                    steps=steps), batch["prompt_len"], eot)
    samples = jax.vmap(lambda r: _parse_answer(generate(
        run, m, params, batch["inputs"], batch["prompt_len"], steps=steps, rng=r,
        temperature=temp), batch["prompt_len"], eot))(jax.random.split(rng, k))   # k x B
    votes = (jax.nn.one_hot(samples, task.vocab_size) * (samples >= 0)[..., None]).sum(0)
    vote = jnp.where(votes.sum(-1) > 0, jnp.argmax(votes, -1), -1)
    return (greedy == gold).sum(), (vote == gold).sum(), gold.shape[0]

  g = sc = n = 0
  for i, b in enumerate(batches):
    a, c, cnt = one(params, b, jax.random.key(i))
    g, sc, n = g + int(a), sc + int(c), n + int(cnt)
  return {"accuracy_generate": g / n, f"accuracy_self_consistency_k{k}": sc / n,
          "self_consistency_k": k, "generate_examples": n}


# --------------------------------------------------------------------------- Memory (MAC)

def make_memory_system(config, task) -> System:
  m = config.model
  graphdef, _ = _split(nnx.eval_shape(lambda: hrrm.build(m, task.vocab_size)))
  c = m.chunk

  def loss_fn(params, batch, memory, aux, rng):
    model = nnx.merge(graphdef, params)
    logits, _ = model(batch["inputs"], model.init_memory(batch["inputs"].shape[0]))
    loss = losses.answer_loss(logits, batch["targets"], batch["answer"])
    correct, count = losses.answer_accuracy(logits, batch["targets"], batch["answer"],
                                            task.max_answers)
    return loss, ({"answer_accuracy": correct / jnp.maximum(count, 1.0)}, memory, aux)

  def ingest(params, batch):
    """Every chunk but the last (the queries) written into the Titans memory."""
    model = nnx.merge(graphdef, params)
    inputs = batch["inputs"]
    return model(inputs[:, :-c], model.init_memory(inputs.shape[0]))[1]

  def answer(params, batch, memory):
    """The last chunk reads `memory` without writing (None: the fresh memory M_0)."""
    model = nnx.merge(graphdef, params)
    inputs = batch["inputs"]
    if memory is None:
      memory = model.init_memory(inputs.shape[0])
    logits, _ = model.chunk_step(memory, inputs[:, -c:], inputs.shape[1] - c, write=False)
    tg, ans = batch["targets"][:, -c:], batch["answer"][:, -c:]
    correct, count = losses.answer_accuracy(logits, tg, ans, task.max_answers)
    return {"correct": correct, "count": count, "loss": losses.answer_loss(logits, tg, ans)}

  return System(init=_init_fn(m, task.vocab_size), loss=loss_fn, ingest=ingest, answer=answer,
                graphdef=graphdef)


def make_system(config, task) -> System:
  if config.model.name == "hrrm_memory":
    return make_memory_system(config, task)
  return make_hrm_system(config, task)
