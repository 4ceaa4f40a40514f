"""The Diffuser experiment: train the STM writer through the frozen Generator, then measure it on
held-out contexts against the Generator reading the full text (oracle) and the question alone.

    results = run(config, workdir)       # what experiments/dcm_diffuser.py does

Stages: prepare (data, Generator) -> train (scanned steps, the Generator frozen) -> measure (the
shared yardstick on held-out contexts, question exact match, the question-only baseline, the cost
table) -> write (results.json by the shared writer).
Held out by construction: no evaluation (context, question) pair occurs in training (`split`).
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from memjax.core import config as cfg
from memjax.core import system as system_lib
from memjax.core import yardstick
from memjax.data import qa
from memjax.dcm import diffuser as df
from memjax.dcm import phase1a
from memjax.dcm import system


def validate(config) -> None:
  phase1a.validate(config)
  cfg.positive(config, "diffuser.slots", "diffuser.dim", "diffuser.heads", "diffuser.steps",
               "diffuser.encoder_layers", "data.num_train", "data.num_test",
               "data.max_input_tokens", "train.steps_per_call")
  cfg.divides(config, "train.steps_per_call", "train.steps")
  cfg.require(cfg.get(config, "targets.question_weight") >= 0, "targets.question_weight",
              "must be >= 0")
  cfg.require(cfg.get(config, "diffuser.dim") % cfg.get(config, "diffuser.heads") == 0,
              "diffuser.heads", "must divide diffuser.dim")


def split(num_train: int, num_test: int, seed: int) -> tuple[list, list]:
  """Training and held-out examples (synthetic facts); a held-out (context, question) pair never
  occurs in training."""
  train = qa.synthetic_qa(num_train, seed)
  seen = {(e.context, e.question) for e in train}
  test, s = [], seed + 1
  while len(test) < num_test:
    test += [e for e in qa.synthetic_qa(4 * num_test, s) if (e.context, e.question) not in seen]
    s += 1
  return train, test[:num_test]


def encode_inputs(examples, tokenizer, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """What the writer reads: "{context}\\nQuestion: {question}" (the end kept), right-padded."""
  rows = [phase1a._encode(tokenizer, f"{e.context}\nQuestion: {e.question}")[-max_tokens:]
          for e in examples]
  n = max(len(r) for r in rows)
  ids, mask = np.zeros((len(rows), n), np.int32), np.zeros((len(rows), n), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  return ids, mask


@dataclasses.dataclass
class Data:
  examples: list
  enc: phase1a.Encoded
  input_NxN: np.ndarray
  input_mask: np.ndarray
  question_only: phase1a.Encoded       # oracle prompts holding the question alone

  def batch(self, idx, valid=None) -> dict:
    a = 1
    valid = np.ones(len(idx), bool) if valid is None else valid
    return dict(input=self.input_NxN[idx], input_mask=self.input_mask[idx],
                targets=self.enc.targets_NxSxT[idx], mask=self.enc.mask_NxSxT[idx],
                index=idx.astype(np.int32), valid=valid, answer=self.enc.targets_NxSxT[idx, a],
                answer_mask=self.enc.mask_NxSxT[idx, a], oracle=self.enc.oracle_NxSxP[idx, a],
                oracle_len=self.enc.oracle_len_NxS[idx, a])


def _data(examples, tokenizer, config) -> Data:
  enc = phase1a.encode(examples, tokenizer, config)
  ids, mask = encode_inputs(examples, tokenizer, config.data.max_input_tokens)
  q_only = config.copy_and_resolve_references()
  q_only.oracle.answer_template = config.baselines.question_only_template
  return Data(examples, enc, ids, mask, phase1a.encode(examples, tokenizer, q_only))


def longest_answer(enc: phase1a.Encoded) -> int:
  """Target tokens of the longest answer, its EOS included (`target_len_NxS` leaves it out)."""
  return int(enc.mask_NxSxT[:, 1].sum(-1).max())


def train(runner: phase1a.Phase1a, trainer: df.Trainer, wparams, data: Data, config, log=print):
  t = config.train
  opt_state = trainer.tx.init(wparams)
  fn = jax.jit(trainer.steps)
  rng = np.random.default_rng(t.seed)
  n, b, k = len(data.examples), t.batch_size, t.steps_per_call
  answer_len = longest_answer(data.enc)
  key = jax.random.key(t.seed)
  curve = []
  for call in range(t.steps // k):
    idx = rng.integers(0, n, (k, b))
    stacked = {name: np.stack([data.batch(i)[name] for i in idx])
               for name in ("input", "input_mask", "targets", "mask")}
    if trainer.question_weight == 0:
      stacked = trainer.answer_only(stacked, answer_len)
    t0 = time.time()
    wparams, opt_state, l, ce = fn(wparams, opt_state, runner.params, runner.parts, stacked, key,
                                   jnp.int32(call * k))
    l, ce = np.asarray(l), np.asarray(ce)
    if not np.all(np.isfinite(l)):
      raise FloatingPointError(f"diffuser training: non-finite loss at step {call * k}")
    curve.append(l)
    if (call + 1) % max(1, t.log_every // k) == 0 or call == 0:
      parts = ", ".join(f"{p} {v:.3f}" for p, v in zip("QA"[-ce.shape[1]:], ce.mean(0)))
      log(f"  step {(call + 1) * k}: loss {l.mean():.3f} ({parts}), {time.time() - t0:.1f}s")
  return wparams, np.concatenate(curve)


def measure(runner, trainer: df.Trainer, wparams, data: Data, config) -> dict:
  """The yardstick on held-out contexts, question EM, the question-only baseline, the costs."""
  b = config.train.eval_batch_size
  slack = config.decode.slack
  enc = data.enc
  reader = system.Reader(runner.gen, runner.tokenizer, tuple(e.answer for e in data.examples),
                         tuple(int(x) for x in enc.target_len_NxS[:, 1]),
                         bool(config.decode.truncate_to_target), enc.targets_NxSxT.shape[-1] + slack,
                         int(enc.target_len_NxS[:, 1].max()) + slack)
  key = jax.random.key(config.train.seed + 1)
  ingest = lambda params, batch: system.Content(
      trainer.content(params["writer"], params["generator"], batch, key))
  sysm = system_lib.System(init=system._not_trained, loss=system._not_trained,
                           answer=reader.answer, ingest=ingest, oracle=reader.oracle)
  params = {"generator": runner.params, "parts": runner.parts, "writer": wparams}
  batches = [data.batch(idx, valid) for idx, valid in phase1a._batches(len(data.examples), b)]
  results = yardstick.evaluate(sysm, params, batches, qa.chance(config.data.source))
  # [A_mode | STM] carries no question: zeroed, the Generator does not know which attribute
  results["chance_without_question"] = qa.chance_without_question(config.data.source)

  # the question alone, as text (what the Generator knows without the context)
  q_batches = [dict(bt, oracle=data.question_only.oracle_NxSxP[bt["index"], 1],
                    oracle_len=data.question_only.oracle_len_NxS[bt["index"], 1])
               for bt in batches]
  oracle = jax.jit(reader.oracle)
  qo = [oracle(params, bt) for bt in q_batches]
  results["accuracy_question_only"] = sum(float(o["correct"]) for o in qo) / sum(
      float(o["count"]) for o in qo)

  # the question from [Q_mode | STM] (does the STM hold the question too?)
  content = np.concatenate([np.asarray(jax.jit(ingest)(params, bt).content_BxKxD)
                            for bt in batches])[:len(data.examples)]
  texts = phase1a.decode(runner, enc, content)
  results["question_exact_match"] = float(np.mean(
      [qa.exact_match(p, e.question) for p, e in zip(texts["question"], data.examples)]))
  results["samples"] = [{"question": e.question, "answer": e.answer, "got_question": q,
                         "got_answer": a} for e, q, a in
                        list(zip(data.examples, texts["question"], texts["answer"]))[:8]]

  # cost: rows the Generator attends over per answer, and seconds per answer (after a warm-up)
  answer = jax.jit(lambda p, bt: reader.answer(p, bt, ingest(p, bt)))
  timings = {}
  for name, fn, bts in (("stm", answer, batches), ("oracle", oracle, batches),
                        ("question_only", oracle, q_batches)):
    jax.block_until_ready(fn(params, bts[0]))
    t0 = time.perf_counter()
    for bt in bts:
      jax.block_until_ready(fn(params, bt))
    timings[name] = (time.perf_counter() - t0) / len(data.examples)
  p_stm = int(runner.parts.bos_1xD.shape[0]) + 1 + config.diffuser.slots
  results["cost"] = {
      "stm": {"tokens_read": p_stm, "seconds_per_answer": timings["stm"],
              "writer_input_tokens": float(data.input_mask.sum(1).mean())},
      "oracle": {"tokens_read": float(enc.oracle_len_NxS[:, 1].mean()),
                 "seconds_per_answer": timings["oracle"]},
      "question_only": {"tokens_read": float(data.question_only.oracle_len_NxS[:, 1].mean()),
                        "seconds_per_answer": timings["question_only"]},
  }
  return results


def run(config, workdir: str, *, log=print) -> dict:
  t_start = time.time()
  validate(config)
  loaded = phase1a.load_generator(config.model, dtype=config.dtype, seed=config.train.seed)
  runner = phase1a.Phase1a(loaded.model, loaded.tokenizer, config)
  train_ex, test_ex = split(config.data.num_train, config.data.num_test, config.data.seed)
  d_train, d_test = (_data(x, loaded.tokenizer, config) for x in (train_ex, test_ex))
  c = config.diffuser
  dcfg = df.DiffuserConfig(c.slots, c.dim, c.heads, c.encoder_layers, c.steps, c.sigma_max,
                           c.schedule, bool(c.copy))
  writer = df.Writer(runner.dim, runner.init_scale, dcfg, rngs=nnx.Rngs(config.train.seed))
  wdef, wparams = nnx.split(writer, nnx.Param)
  t = config.train
  sched = optax.warmup_cosine_decay_schedule(0.0, t.lr, t.warmup_steps, t.steps, t.lr * 0.1)
  tx = optax.chain(optax.clip_by_global_norm(t.clip_norm), optax.adamw(sched, weight_decay=t.weight_decay))
  trainer = df.Trainer(runner.gen, wdef, tx, float(config.targets.question_weight))
  log(f"diffuser: {len(train_ex)} training / {len(test_ex)} held-out examples, K={c.slots}, "
      f"T={c.steps}, {t.steps} steps of {t.batch_size}, model {loaded.name}")
  t0 = time.time()
  wparams, curve = train(runner, trainer, wparams, d_train, config, log)
  t_train = time.time() - t0
  t0 = time.time()
  results = measure(runner, trainer, wparams, d_test, config)
  results.update({"num_train": len(train_ex), "num_test": len(test_ex), "num_slots": c.slots,
                  "denoise_steps": c.steps, "train_steps": t.steps, "final_train_loss":
                  float(curve[-max(1, len(curve) // 10):].mean()), "model": loaded.name,
                  "seconds": {"train": t_train, "measure": time.time() - t0,
                              "total": time.time() - t_start}})
  if "gemma" in str(loaded.name).lower():
    results["notice"] = phase1a.GEMMA_NOTICE
  if jax.process_index() == 0:
    import json  # pylint: disable=g-import-not-at-top
    yardstick.write_results(workdir, dict(results, config=json.loads(config.to_json_best_effort())))
  return results
