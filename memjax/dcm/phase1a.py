"""Dynamic Context Memory phase 1a: the experiment, as a library a notebook can call.

    results = run(config, workdir)      # what experiments/phase1a.py does

For each batch of QA examples:
  baselines   CE of question and answer with random content, and with the Generator reading the
              source text (the full-context baseline, text prompts from config.oracle);
  stage 1     Q alone and A alone, each from its own content (addressability);
  stage 2     Q and A from one joint content;
              each stage: rounds of `steps` steps; after each round the unconverged contents are
              re-initialised with fresh keys (up to num_restarts times), same compiled function;
  stage 3     greedy decoding (spot validation): Q from [Q_mode | content], A from [A_mode | content];
  yardstick   memjax.core.yardstick.evaluate over the contents (memjax.dcm.system): answers with
              the content, zeroed, shuffled (another example's), none ([A_mode] alone), and the
              source text (oracle).
`run` calls prepare -> optimise -> decode -> measure -> summarise -> write, in that order.
Writes <workdir>/examples/<id>.json, content.npz, curves.npz and results.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from memjax import pretrained
from memjax.core import config as cfg
from memjax.core import distributed
from memjax.core import yardstick
from memjax.data import qa
from memjax.dcm import soft_prompt as sp
from memjax.dcm import system

GEMMA_NOTICE = ("Gemma is provided under and subject to the Gemma Terms of Use found at "
                "ai.google.dev/gemma/terms")


# --- config ------------------------------------------------------------------------------------

def validate(config: ml_collections.ConfigDict) -> None:
  """Raises memjax.core.config.ConfigError('<field>: <what is wrong>') before anything loads."""
  m = cfg.get(config, "model")
  cfg.require(isinstance(m, str) and m.strip() != "", "model",
              f"must be a model name ('gemma3-270m', 'tiny:qwen2', 'tiny:gemma3') or a folder "
              f"path, got {m!r}")
  if isinstance(m, str) and not m.startswith("tiny:") and m != "gemma3-270m":
    cfg.require(os.path.exists(m), "model", f"no such model folder or file: {m!r}")
  cfg.one_of(config, "dtype", ("float32", "bfloat16"))
  cfg.one_of(config, "data.source", ("synthetic", "natural", "squad_v2"))
  cfg.positive(config, "data.num_examples", "data.max_question_tokens", "data.max_answer_tokens",
               "data.max_context_tokens", "stm.num_slots", "train.steps", "train.batch_size",
               "train.lr", "decode.slack")
  cfg.non_negative(config, "num_restarts", "train.clip_norm", "train.warmup_steps",
                   "loss.semantic_weight", "loss.scheduled_sampling", "train.seed", "data.seed")
  cfg.one_of(config, "optim.schedule", ("constant", "cosine", "warmup_cosine"))
  cfg.require(cfg.get(config, "loss.semantic_weight") <= 1, "loss.semantic_weight",
              "must be in [0, 1]")
  cfg.require(cfg.get(config, "loss.scheduled_sampling") <= 1, "loss.scheduled_sampling",
              "must be in [0, 1]")
  cfg.positive(config, "loss.semantic_topk")
  for f in ("convergence.random_ratio", "convergence.context_ratio", "convergence.part_ratio"):
    cfg.positive(config, f)
  cfg.non_negative(config, "convergence.part_floor")
  cfg.one_of(config, "convergence.part_baseline", ("context", "stage1"))
  data_par = cfg.get(config, "train.data_parallel")
  cfg.require(isinstance(data_par, int) and data_par >= 1, "train.data_parallel",
              f"must be a positive int, got {data_par!r}")
  cfg.require(data_par <= jax.device_count(), "train.data_parallel",
              f"{data_par} devices asked, {jax.device_count()} available")
  cfg.require(cfg.get(config, "train.batch_size") % data_par == 0, "train.batch_size",
              f"{cfg.get(config, 'train.batch_size')} is not a multiple of "
              f"train.data_parallel={data_par}")
  for f, keys in (("oracle.question_template", ("context",)),
                  ("oracle.answer_template", ("context", "question"))):
    template = cfg.get(config, f)
    try:
      template.format(context="c", question="q", answer="a")
    except (KeyError, IndexError, AttributeError, ValueError) as e:
      raise cfg.ConfigError(f"{f}: bad template {template!r} ({e})") from None
    cfg.require("{answer}" not in template, f, "must not contain the answer")
  for f in ("stm.mode_q_text", "stm.mode_a_text"):
    cfg.require(isinstance(cfg.get(config, f), str) and cfg.get(config, f).strip() != "", f,
                "must be a non-empty string")


# --- the Generator -----------------------------------------------------------------------------

@dataclasses.dataclass
class Loaded:
  model: Any
  tokenizer: Any
  name: str


def load_generator(name_or_path: str, *, dtype: str = "float32", seed: int = 0) -> Loaded:
  """'gemma3-270m', a Hugging Face folder / GGUF file, or 'tiny:<arch>' (random, for tests)."""
  if name_or_path.startswith("tiny:"):
    out = pretrained.make_tiny(name_or_path.split(":", 1)[1], seed)
  else:
    out = pretrained.load(name_or_path, dtype=dtype)
  return Loaded(out.model, out.tokenizer, getattr(out, "name", name_or_path))


def _bos(tokenizer) -> int | None:
  bos = getattr(tokenizer, "bos_id", None)
  return bos if getattr(tokenizer, "add_bos", bos is not None) else None


def _encode(tokenizer, text: str) -> list[int]:
  ids = list(tokenizer.encode(text))
  bos = getattr(tokenizer, "bos_id", None)
  if ids and bos is not None and ids[0] == bos:  # tokenizers that add BOS by themselves
    ids = ids[1:]
  return ids


# --- data --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Encoded:
  """numpy arrays over all N examples (before batching)."""
  targets_NxSxT: np.ndarray
  mask_NxSxT: np.ndarray
  target_len_NxS: np.ndarray       # tokens without EOS (for the decode length limit)
  oracle_NxSxP: np.ndarray         # text prompts: [BOS] template tokens, right-padded
  oracle_len_NxS: np.ndarray


def encode(examples: list[qa.QAExample], tokenizer, config) -> Encoded:
  eos = getattr(tokenizer, "eos_id", None)
  append_eos = bool(config.targets.append_eos) and eos is not None
  bos = _bos(tokenizer)
  limits = (config.data.max_question_tokens, config.data.max_answer_tokens)
  tgts, lens, prompts = [], [], []
  for ex in examples:
    row, row_len = [], []
    for s, text in enumerate((ex.question, ex.answer)):
      ids = _encode(tokenizer, " " + text.strip())[:limits[s]]
      if not ids:
        raise ValueError(f"data: example {ex.id} has an empty {('question', 'answer')[s]}")
      row_len.append(len(ids))
      row.append(ids + ([eos] if append_eos else []))
    tgts.append(row)
    lens.append(row_len)
    row_p = []
    for template in (config.oracle.question_template, config.oracle.answer_template):
      text = template.format(context=ex.context, question=ex.question.strip())
      ids = _encode(tokenizer, text)
      ids = ids[-config.data.max_context_tokens:]      # keep the end: the question and cue
      row_p.append(([bos] if bos is not None else []) + ids)
    prompts.append(row_p)
  n = len(examples)
  t = max(len(x) for row in tgts for x in row)
  p = max(len(x) for row in prompts for x in row)
  targets = np.zeros((n, 2, t), np.int32)
  mask = np.zeros((n, 2, t), np.float32)
  oracle = np.zeros((n, 2, p), np.int32)
  oracle_len = np.zeros((n, 2), np.int32)
  for i in range(n):
    for s in range(2):
      x = tgts[i][s]
      targets[i, s, :len(x)] = x
      mask[i, s, :len(x)] = 1
      y = prompts[i][s]
      oracle[i, s, :len(y)] = y
      oracle_len[i, s] = len(y)
  return Encoded(targets, mask, np.asarray(lens, np.int32), oracle, oracle_len)


# --- distribution (memjax.core.distributed) ----------------------------------------------------

def to_host(x) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


# --- the compiled pieces -----------------------------------------------------------------------

class Phase1a:
  """The frozen Generator plus the jitted functions phase 1a needs (each compiles once)."""

  def __init__(self, model, tokenizer, config, mesh=None):
    self.config = config
    self.tokenizer = tokenizer
    self.mesh = mesh or distributed.make_mesh(config.train.data_parallel)
    self.eos = getattr(tokenizer, "eos_id", None)
    self.gen, params = sp.Generator.split(model, bos_id=_bos(tokenizer), eos_id=self.eos)
    self.params = distributed.replicate(params, self.mesh)
    self.dim = int(model.embed(jnp.zeros((1, 1), jnp.int32)).shape[-1])
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or tokenizer.vocab_size)
    t = config.train
    self.init_scale = sp.embedding_rms(model, vocab, seed=t.seed) * config.stm.init_scale
    bos = self.gen.bos_id
    bos_1xD = (model.embed(jnp.asarray([[bos]], jnp.int32))[0] if bos is not None
               else jnp.zeros((0, self.dim), jnp.float32))
    modes = [model.embed(jnp.asarray([_encode(tokenizer, m)], jnp.int32))[0].mean(0)
             for m in (config.stm.mode_q_text, config.stm.mode_a_text)]
    self.parts = distributed.replicate(sp.PromptParts(bos_1xD.astype(jnp.float32),
                                                      jnp.stack(modes).astype(jnp.float32)),
                                       self.mesh)
    o = config.optim
    self.optimizer = sp.ContentOptimizer.create(
        steps=t.steps, lr=t.lr, clip_norm=t.clip_norm or None, schedule=o.schedule,
        warmup_steps=t.warmup_steps, end_lr_fraction=o.end_lr_fraction, eps=o.get("eps", 1e-8),
        unroll=config.unroll)
    c = config.convergence
    self.rule = sp.ConvergenceRule(c.random_ratio, c.context_ratio, c.part_ratio, c.part_floor)
    l = config.loss
    self.options = sp.LossOptions(l.semantic_weight, l.semantic_topk, l.scheduled_sampling)
    self.key = jax.random.key(t.seed)
    self.traces = {"round": 0, "ce": 0, "generate": 0}
    self._round = jax.jit(self._round_impl)
    self._ce = jax.jit(self._ce_impl)
    self._generate = jax.jit(self._generate_impl, static_argnames=("max_new_tokens",))

  # pure bodies -------------------------------------------------------------------------------
  def _round_impl(self, params, parts, state, batch, src_S, round_index, key):
    self.traces["round"] += 1
    model = self.gen.merge(params)
    return sp.optimize_round(model, parts, self.optimizer, self.rule, state, batch, src_S, key,
                             round_index, self.init_scale, options=self.options)

  def _ce_impl(self, params, prompts_BxSxPxD, plen_BxS, targets_BxSxT, mask_BxSxT):
    """Per-target CE after arbitrary soft prompts (forward only)."""
    self.traces["ce"] += 1
    model = self.gen.merge(params)
    b, s, p, d = prompts_BxSxPxD.shape
    flat = lambda x: x.reshape((b * s,) + x.shape[2:])
    ce = sp.sequence_losses(model, flat(prompts_BxSxPxD), flat(plen_BxS), flat(targets_BxSxT),
                            flat(mask_BxSxT))[1]
    return ce.reshape(b, s)

  def _generate_impl(self, params, prompts_NxPxD, *, max_new_tokens):
    self.traces["generate"] += 1
    return pretrained.greedy_generate(self.gen.merge(params), embeds_BxTxD=prompts_NxPxD,
                                      max_new_tokens=max_new_tokens, eos_id=self.eos)

  # helpers -----------------------------------------------------------------------------------
  def stm_prompts(self, contents_BxKxD, src=(0, 0)):
    """[BOS] [mode_s | content] for both targets: B x S x P x D (content shared)."""
    c = jnp.stack([contents_BxKxD, contents_BxKxD], axis=1)
    return jax.vmap(lambda x: sp.stm_prompts(self.parts, x, jnp.asarray(src)))(c)

  def text_prompts(self, tokens_BxSxP):
    model = self.gen.merge(self.params)
    b, s, p = tokens_BxSxP.shape
    return model.embed(jnp.asarray(tokens_BxSxP).reshape(b * s, p)).reshape(b, s, p, -1)

  def random_contents(self, index_B, salt: int):
    k = jax.random.fold_in(self.key, 1_000_003 + salt)
    keys = sp.example_keys(k, jnp.asarray(index_B))
    n, d = self.config.stm.num_slots, self.dim
    return jax.vmap(lambda kk: sp.init_content(kk, n, d, self.init_scale))(keys)

  def shard(self, tree):
    return distributed.shard_batch(jax.tree.map(np.asarray, tree), self.mesh)

  def ce(self, prompts, plen, targets, mask, pad_to: int | None = None):
    """Per-target CE; `pad_to` right-pads the prompt rows (one compiled shape for all prompts)."""
    b = prompts.shape[0]
    plen = jnp.broadcast_to(jnp.asarray(plen, jnp.int32), (b, prompts.shape[1]))
    if pad_to is not None and pad_to > prompts.shape[2]:
      prompts = jnp.pad(prompts, ((0, 0), (0, 0), (0, pad_to - prompts.shape[2]), (0, 0)))
    return to_host(self._ce(self.params, *self.shard((prompts, plen, targets, mask))))

  def generate(self, prompts_NxPxD, max_new_tokens):
    return to_host(self._generate(self.params, self.shard(prompts_NxPxD),
                                  max_new_tokens=max_new_tokens))

  def run_stage(self, stage: str, batch: dict, part_ce_BxS: np.ndarray, log=print):
    """Rounds of (re)starts for one stage; returns (state as numpy dict, curves, ce curves)."""
    src = jnp.asarray(sp.STAGE_SOURCES[stage], jnp.int32)
    b = batch["targets"].shape[0]
    state = sp.StageState.init(b, self.config.stm.num_slots, self.dim)
    if self.config.convergence.part_baseline == "context":
      part_ce_BxS = batch["context_ce"]
    batch = dict(batch, part_ce=np.asarray(part_ce_BxS, np.float32))
    sharded = self.shard(batch)
    state = self.shard(state)
    used = np.asarray(sp.used_contents(src))
    curves, ce_curves = [], []
    skey = jax.random.fold_in(self.key, {"stage1": 1, "stage2": 2}[stage])
    for r in range(self.config.num_restarts + 1):
      t0 = time.time()
      state, curve, ce_curve, restarted = self._round(self.params, self.parts, state, sharded, src,
                                                      jnp.int32(r), skey)
      curves.append(to_host(curve))
      ce_curves.append(to_host(ce_curve))
      conv = to_host(state.converged_BxC)[:, used][batch["valid"]]
      log(f"  {stage} round {r}: {int(to_host(restarted).sum())} contents optimized, "
          f"converged {int(conv.sum())}/{conv.size}, {time.time() - t0:.1f}s")
      if conv.all():
        break
    host = {f.name: to_host(getattr(state, f.name)) for f in dataclasses.fields(state)}
    return host, np.stack(curves), np.stack(ce_curves)


# --- the experiment, stage by stage ------------------------------------------------------------

def _batches(n: int, size: int):
  """(global indices, valid) per batch; the last batch is padded with example 0 (not valid)."""
  for start in range(0, n, size):
    idx = np.arange(start, start + size)
    valid = idx < n
    yield np.where(valid, idx, 0), valid


def _mean(x) -> float | None:
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else None


def prepare(config) -> tuple[list[qa.QAExample], Loaded]:
  """Validates the config, loads the examples and the Generator; every user-fixable problem
  (bad field, missing dataset, bad model folder) comes out as a ConfigError naming the field."""
  validate(config)
  try:
    examples = qa.load(config.data.source, config.data.num_examples, seed=config.data.seed,
                       split=config.data.split, data_dir=config.data.data_dir or None)
  except ValueError as e:
    raise cfg.ConfigError(str(e) if str(e).startswith("data.") else f"data: {e}") from None
  try:
    loaded = load_generator(config.model, dtype=config.dtype, seed=config.train.seed)
  except (ValueError, FileNotFoundError, KeyError) as e:
    raise cfg.ConfigError(f"model: {config.model!r}: {e}") from None
  return examples, loaded


@dataclasses.dataclass
class Found:
  """What stages 1 and 2 found, over all N examples (padding rows dropped)."""
  random_ce_NxS: np.ndarray        # baseline: CE after random content
  context_ce_NxS: np.ndarray       # baseline: CE after the source text
  stage1: dict | None              # StageState fields as numpy (contents N x C x K x D, ...)
  stage2: dict
  curves: dict                     # stage -> {"loss": [per batch], "ce": [per batch]}
  seconds: dict

  @property
  def content_NxKxD(self) -> np.ndarray:
    return self.stage2["contents_BxCxKxD"][:, 0]


def baselines(runner: Phase1a, enc: Encoded, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """CE of Q and A after random content, and after the source text (the full-context one)."""
  tg, mk = enc.targets_NxSxT[idx], enc.mask_NxSxT[idx]
  p_stm = runner.parts.bos_1xD.shape[0] + 1 + runner.config.stm.num_slots
  p_eval = max(enc.oracle_NxSxP.shape[-1], p_stm)
  rnd = runner.ce(runner.stm_prompts(runner.random_contents(idx, 0)), p_stm, tg, mk,
                  pad_to=p_eval)
  ctx = runner.ce(runner.text_prompts(enc.oracle_NxSxP[idx]), enc.oracle_len_NxS[idx], tg, mk,
                  pad_to=p_eval)
  return rnd, ctx


def optimise(runner: Phase1a, enc: Encoded, log=print) -> Found:
  """Baselines, stage 1 (Q alone, A alone) and stage 2 (joint), batch by batch."""
  config = runner.config
  n = enc.targets_NxSxT.shape[0]
  seconds = {"baselines": 0.0, "stage1": 0.0, "stage2": 0.0}
  stages = ("stage1", "stage2") if config.run_stage1 else ("stage2",)
  states = {s: [] for s in stages}
  curves = {s: {"loss": [], "ce": []} for s in stages}
  rnd_all, ctx_all = [], []
  for idx, valid in _batches(n, config.train.batch_size):
    t0 = time.time()
    rnd, ctx = baselines(runner, enc, idx)
    rnd_all.append(rnd)
    ctx_all.append(ctx)
    seconds["baselines"] += time.time() - t0
    batch = dict(targets=enc.targets_NxSxT[idx], mask=enc.mask_NxSxT[idx],
                 index=idx.astype(np.int32), valid=valid, random_ce=rnd.astype(np.float32),
                 context_ce=ctx.astype(np.float32))
    part = np.full((len(idx), 2), np.inf, np.float32)       # stage 1 has no part baseline
    for stage in stages:
      t0 = time.time()
      st, curve, ce_curve = runner.run_stage(stage, batch, part, log=log)
      seconds[stage] += time.time() - t0
      states[stage].append(st)
      curves[stage]["loss"].append(curve)
      curves[stage]["ce"].append(ce_curve)
      part = st["ce_BxS"]                                    # stage 2 is judged against it
  valid_all = np.concatenate([v for _, v in _batches(n, config.train.batch_size)])
  cat = lambda xs: np.concatenate(xs, axis=0)[valid_all]
  gather = lambda sts: {k: cat([s[k] for s in sts]) for k in sts[0]}
  return Found(cat(rnd_all), cat(ctx_all), gather(states["stage1"]) if config.run_stage1 else None,
               gather(states["stage2"]), curves, seconds)


def decode(runner: Phase1a, enc: Encoded, content_NxKxD: np.ndarray) -> dict:
  """Stage 3, spot validation: greedy Q from [Q_mode | content], A from [A_mode | content]."""
  config = runner.config
  n = content_NxKxD.shape[0]
  new_tokens = enc.targets_NxSxT.shape[-1] + config.decode.slack
  out = {"question": [], "answer": []}
  for idx, valid in _batches(n, config.train.batch_size):
    p = runner.stm_prompts(jnp.asarray(content_NxKxD[idx]))               # B x S x P x D
    toks = runner.generate(p.reshape((-1,) + p.shape[2:]), new_tokens).reshape(len(idx), 2, -1)
    for j, i in enumerate(idx):
      if not valid[j]:
        continue
      for s, name in enumerate(("question", "answer")):
        lim = enc.target_len_NxS[i, s] if config.decode.truncate_to_target else None
        out[name].append(system.decode_text(runner.tokenizer, toks[j, s], runner.eos, lim))
  return out


def reader(runner: Phase1a, enc: Encoded, examples: list[qa.QAExample]) -> system.Reader:
  slack = runner.config.decode.slack
  return system.Reader(runner.gen, runner.tokenizer, tuple(ex.answer for ex in examples),
                       tuple(int(x) for x in enc.target_len_NxS[:, sp.ANSWER]),
                       bool(runner.config.decode.truncate_to_target),
                       enc.targets_NxSxT.shape[-1] + slack,
                       int(enc.target_len_NxS[:, sp.ANSWER].max()) + slack)


def measure(runner: Phase1a, enc: Encoded, examples: list[qa.QAExample],
            content_NxKxD: np.ndarray, chance: float) -> dict:
  """The shared memory-use yardstick over the optimised contents (memjax.core.yardstick):
  memory, zeroed and shuffled (the memory protocol's), no memory ([A_mode] alone), oracle (the
  source text). `loss` is the answer's CE, so delta_zero = answer CE zeroed / answer CE."""
  a = sp.ANSWER
  batches = [dict(content=content_NxKxD[idx], index=idx.astype(np.int32), valid=valid,
                  answer=enc.targets_NxSxT[idx, a], answer_mask=enc.mask_NxSxT[idx, a],
                  oracle=enc.oracle_NxSxP[idx, a], oracle_len=enc.oracle_len_NxS[idx, a])
             for idx, valid in _batches(len(examples), runner.config.train.batch_size)]
  params = {"generator": runner.params, "parts": runner.parts}
  return yardstick.evaluate(system.make_system(reader(runner, enc, examples)), params,
                            batches, chance)


def summarise(config, loaded: Loaded, examples, found: Found, texts: dict, ys: dict,
              seconds: dict) -> tuple[dict, dict]:
  """results.json's figures, and the per-example scores the records need."""
  q_em = [qa.exact_match(p, ex.question) for p, ex in zip(texts["question"], examples)]
  a_em = [qa.exact_match(p, ex.answer) for p, ex in zip(texts["answer"], examples)]
  f1 = [qa.token_f1(p, ex.answer) for p, ex in zip(texts["answer"], examples)]
  rnd, ctx, st1, st2 = found.random_ce_NxS, found.context_ce_NxS, found.stage1, found.stage2
  ce2 = st2["ce_BxS"]
  joint2 = ce2.mean(-1)
  conv = st2["converged_BxC"][:, 0]
  both = np.asarray(q_em) & np.asarray(a_em)
  results = {
      "convergence_rate": float(conv.mean()),
      "stage2_loss": _mean(joint2),
      "stage2_ratio_random": _mean(joint2 / rnd.mean(-1)),
      "stage2_ratio_context": _mean(joint2 / ctx.mean(-1)),
      "stage2_question_ratio_random": _mean(ce2[:, 0] / rnd[:, 0]),
      "stage2_answer_ratio_random": _mean(ce2[:, 1] / rnd[:, 1]),
      "stage2_question_ratio_context": _mean(ce2[:, 0] / ctx[:, 0]),
      "stage2_answer_ratio_context": _mean(ce2[:, 1] / ctx[:, 1]),
      "stage2_mean_attempts": float(st2["attempts_BxC"][:, 0].mean()),
      "random_loss": _mean(rnd.mean(-1)),
      "context_loss": _mean(ctx.mean(-1)),
  }
  if st1 is not None:
    ce1 = st1["ce_BxS"]
    results.update({
        "stage1_question_convergence_rate": float(st1["converged_BxC"][:, 0].mean()),
        "stage1_answer_convergence_rate": float(st1["converged_BxC"][:, 1].mean()),
        "stage1_question_ratio_random": _mean(ce1[:, 0] / rnd[:, 0]),
        "stage1_answer_ratio_random": _mean(ce1[:, 1] / rnd[:, 1]),
        "stage1_question_ratio_context": _mean(ce1[:, 0] / ctx[:, 0]),
        "stage1_answer_ratio_context": _mean(ce1[:, 1] / ctx[:, 1]),
        "stage2_question_ratio_stage1": _mean(ce2[:, 0] / ce1[:, 0]),
        "stage2_answer_ratio_stage1": _mean(ce2[:, 1] / ce1[:, 1]),
    })
  results.update(ys)
  results.update({
      "question_exact_match": _mean(q_em),
      "answer_exact_match": _mean(a_em),
      # the design's output criterion: of the converged contents, both outputs exactly right
      "converged_both_exact_match": _mean(both[conv]) if conv.any() else None,
      "answer_f1": _mean(f1),
      "num_examples": len(examples),
      "num_slots": config.stm.num_slots,
      "steps": config.train.steps,
      "num_restarts": config.num_restarts,
      "model": loaded.name,
      "data": config.data.source,
      "devices": jax.device_count(),
      "seconds": seconds,
  })
  if "gemma" in str(loaded.name).lower():
    results["notice"] = GEMMA_NOTICE
  return results, {"question_em": q_em, "answer_em": a_em, "answer_f1": f1}


def run(config, workdir: str, *, examples: list[qa.QAExample] | None = None,
        loaded: Loaded | None = None, log=print) -> dict:
  """The whole experiment: load, optimise (stages 1-2), decode (stage 3), yardstick, write."""
  t_start = time.time()
  if examples is None or loaded is None:
    examples, loaded = prepare(config)
  else:
    validate(config)
  t_loaded = time.time()
  runner = Phase1a(loaded.model, loaded.tokenizer, config)
  enc = encode(examples, loaded.tokenizer, config)
  log(f"phase 1a: {len(examples)} examples, K={config.stm.num_slots}, d={runner.dim}, "
      f"{config.train.steps} steps x {config.num_restarts + 1} rounds, model {loaded.name}, "
      f"{jax.device_count()} devices")
  found = optimise(runner, enc, log)
  t0 = time.time()
  texts = decode(runner, enc, found.content_NxKxD)
  t1 = time.time()
  ys = measure(runner, enc, examples, found.content_NxKxD, qa.chance(config.data.source))
  seconds = {"load": t_loaded - t_start, **found.seconds, "stage3": t1 - t0,
             "yardstick": time.time() - t1, "total": time.time() - t_start}
  results, scores = summarise(config, loaded, examples, found, texts, ys, seconds)
  results["compiles"] = dict(runner.traces)
  if jax.process_index() == 0:
    write(workdir, config, examples, enc, results, found, texts, scores, runner)
  return results


def write(workdir, config, examples, enc, results, found: Found, texts, scores, runner) -> None:
  """examples/<id>.json, content.npz, curves.npz, then results.json (the shared writer)."""
  os.makedirs(os.path.join(workdir, "examples"), exist_ok=True)
  lst = lambda x: [float(v) for v in np.asarray(x).ravel()]
  st1, st2 = found.stage1, found.stage2
  for i, ex in enumerate(examples):
    rec = {
        "id": ex.id, "context": ex.context, "question": ex.question, "answer": ex.answer,
        "random_ce": lst(found.random_ce_NxS[i]), "context_ce": lst(found.context_ce_NxS[i]),
        "stage2": {"ce": lst(st2["ce_BxS"][i]), "converged": bool(st2["converged_BxC"][i, 0]),
                   "attempts": int(st2["attempts_BxC"][i, 0])},
        "stage3": {"question": texts["question"][i], "question_em": bool(scores["question_em"][i]),
                   "answer": texts["answer"][i], "answer_em": bool(scores["answer_em"][i]),
                   "answer_f1": float(scores["answer_f1"][i])},
    }
    if st1 is not None:
      rec["stage1"] = {"ce": lst(st1["ce_BxS"][i]),
                       "converged": [bool(v) for v in st1["converged_BxC"][i]],
                       "attempts": [int(v) for v in st1["attempts_BxC"][i]]}
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ex.id)
    with open(os.path.join(workdir, "examples", f"{safe}.json"), "w") as f:
      json.dump(rec, f, indent=1)
  arrays = {"stage2_content_NxKxD": found.content_NxKxD,
            "modes_SxD": np.asarray(runner.parts.modes_SxD), "targets_NxSxT": enc.targets_NxSxT,
            "ids": np.asarray([e.id for e in examples])}
  if st1 is not None:
    arrays["stage1_content_NxCxKxD"] = st1["contents_BxCxKxD"]
  np.savez(os.path.join(workdir, "content.npz"), **arrays)
  valid_all = np.concatenate([v for _, v in _batches(len(examples), config.train.batch_size)])
  curves = {}
  for stage, v in found.curves.items():
    for name, per_batch in (("loss", v["loss"]), ("ce", v["ce"])):
      # rounds x steps x B x C per batch; batches may stop after different numbers of rounds
      r = max(c.shape[0] for c in per_batch)
      pad = lambda c: np.concatenate([c, np.full((r - c.shape[0],) + c.shape[1:], np.nan,
                                                 c.dtype)], 0)
      curves[f"{stage}_{name}"] = np.concatenate([pad(c) for c in per_batch],
                                                 axis=2)[:, :, valid_all]
  np.savez(os.path.join(workdir, "curves.npz"), **curves)
  yardstick.write_results(workdir, dict(results, config=json.loads(config.to_json_best_effort())))
