"""Dynamic Context Memory phase 1a: the experiment, as a library a notebook can call.

    results = run(config, workdir)      # what experiments/phase1a.py does

For each batch of QA examples:
  baselines   CE of question and answer with random content, and with the Generator reading the
              source text (the full-context baseline, text prompts from config.oracle);
  stage 1     Q alone and A alone, each from its own content (addressability);
  stage 2     Q and A from one joint content;
              each stage: rounds of `steps` steps; after each round the unconverged contents are
              re-initialised with fresh keys (up to num_restarts times), same compiled function;
  stage 3     greedy decoding (spot validation) from the stage-2 content, plus the memory-use
              yardstick: answers from zeroed content, another example's content, the mode slot
              alone, and the source text.
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
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from memjax.core import config as cfg
from memjax.core import distributed
from memjax.data import qa
from memjax.core import yardstick
from memjax.dcm import soft_prompt as sp

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
  cfg.one_of(config, "data.source", ("synthetic", "squad_v2"))
  cfg.positive(config, "data.num_examples", "data.max_question_tokens", "data.max_answer_tokens",
               "data.max_context_tokens", "stm.num_slots", "steps", "batch_size", "optim.lr",
               "decode.slack")
  cfg.non_negative(config, "num_restarts", "optim.clip_norm", "optim.warmup_steps",
                   "loss.semantic_weight", "loss.scheduled_sampling", "seed", "data.seed")
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
  data_par = cfg.get(config, "mesh.data")
  cfg.require(isinstance(data_par, int) and data_par >= 1, "mesh.data",
              f"must be a positive int, got {data_par!r}")
  cfg.require(cfg.get(config, "batch_size") % data_par == 0, "batch_size",
              f"{cfg.get(config, 'batch_size')} is not a multiple of mesh.data={data_par}")
  for f, keys in (("oracle.question_template", ("context",)),
                  ("oracle.answer_template", ("context", "question"))):
    t = cfg.get(config, f)
    try:
      t.format(context="c", question="q", answer="a")
    except (KeyError, IndexError, AttributeError, ValueError) as e:
      raise cfg.ConfigError(f"{f}: bad template {t!r} ({e})") from None
    cfg.require("{answer}" not in t, f, "must not contain the answer")
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
  from memjax import pretrained
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


def _decode_text(tokenizer, ids, eos: int | None, limit: int | None = None) -> str:
  ids = [int(i) for i in ids]
  if eos is not None and eos in ids:
    ids = ids[:ids.index(eos)]
  if limit is not None:
    ids = ids[:limit]
  return tokenizer.decode(ids).strip()


# --- distribution ------------------------------------------------------------------------------

def make_mesh(data: int) -> jax.sharding.Mesh:
  if data > jax.device_count():
    raise cfg.ConfigError(f"mesh.data: {data} devices asked, {jax.device_count()} available")
  return distributed.make_mesh(data)


def shard_batch(mesh, tree):
  """Global numpy arrays -> jax arrays split over `data` on their leading axis (multi-host safe:
  every process holds the same global arrays and keeps its own shards)."""
  def put(x):
    x = np.asarray(x)
    spec = P("data") if x.ndim and x.shape[0] % mesh.shape["data"] == 0 else P()
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, tree)


def replicate(mesh, tree):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def to_host(x) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


# --- the compiled pieces -----------------------------------------------------------------------

class Phase1a:
  """The frozen Generator plus the four jitted functions phase 1a needs (each compiles once)."""

  def __init__(self, model, tokenizer, config, mesh=None):
    self.config = config
    self.tokenizer = tokenizer
    self.mesh = mesh or make_mesh(config.mesh.data)
    self.eos = getattr(tokenizer, "eos_id", None)
    self.gen, params = sp.Generator.split(model, bos_id=_bos(tokenizer), eos_id=self.eos)
    self.params = replicate(self.mesh, params)
    self.dim = int(model.embed(jnp.zeros((1, 1), jnp.int32)).shape[-1])
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or tokenizer.vocab_size)
    self.init_scale = sp.embedding_rms(model, vocab, seed=config.seed) * config.stm.init_scale
    bos = self.gen.bos_id
    bos_1xD = (model.embed(jnp.asarray([[bos]], jnp.int32))[0] if bos is not None
               else jnp.zeros((0, self.dim), jnp.float32))
    modes = [model.embed(jnp.asarray([_encode(tokenizer, t)], jnp.int32))[0].mean(0)
             for t in (config.stm.mode_q_text, config.stm.mode_a_text)]
    self.parts = replicate(self.mesh, sp.PromptParts(bos_1xD.astype(jnp.float32),
                                                     jnp.stack(modes).astype(jnp.float32)))
    o = config.optim
    self.optimizer = sp.ContentOptimizer.create(
        steps=config.steps, lr=o.lr, clip_norm=o.clip_norm or None, schedule=o.schedule,
        warmup_steps=o.warmup_steps, end_lr_fraction=o.end_lr_fraction, eps=o.get('eps', 1e-8),
        unroll=config.unroll)
    c = config.convergence
    self.rule = sp.ConvergenceRule(c.random_ratio, c.context_ratio, c.part_ratio, c.part_floor)
    l = config.loss
    self.options = sp.LossOptions(l.semantic_weight, l.semantic_topk, l.scheduled_sampling)
    self.key = jax.random.key(config.seed)
    self.traces = {"round": 0, "ce": 0, "decode": 0}
    self._round = jax.jit(self._round_impl)
    self._ce = jax.jit(self._ce_impl)
    self._decode = jax.jit(self._decode_impl, static_argnames=("max_new_tokens",))

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

  def _decode_impl(self, params, prompts_NxPxD, plen_N, *, max_new_tokens):
    self.traces["decode"] += 1
    model = self.gen.merge(params)
    return sp.greedy_decode(model, prompts_NxPxD, plen_N, max_new_tokens, self.eos)

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

  def ce(self, prompts, plen, targets, mask, pad_to: int | None = None):
    """Per-target CE; `pad_to` right-pads the prompt rows (one compiled shape for all prompts)."""
    b = prompts.shape[0]
    plen = jnp.broadcast_to(jnp.asarray(plen, jnp.int32), (b, prompts.shape[1]))
    if pad_to is not None and pad_to > prompts.shape[2]:
      prompts = jnp.pad(prompts, ((0, 0), (0, 0), (0, pad_to - prompts.shape[2]), (0, 0)))
    args = shard_batch(self.mesh, (np.asarray(prompts), np.asarray(plen), np.asarray(targets),
                                   np.asarray(mask)))
    return to_host(self._ce(self.params, *args))

  def decode(self, prompts_NxPxD, plen_N, max_new_tokens):
    args = shard_batch(self.mesh, (np.asarray(prompts_NxPxD), np.asarray(plen_N, np.int32)))
    return to_host(self._decode(self.params, *args, max_new_tokens=max_new_tokens))

  def run_stage(self, stage: str, batch: dict, part_ce_BxS: np.ndarray, log=print):
    """Rounds of (re)starts for one stage; returns (state as numpy dict, curves, ce curves)."""
    src = jnp.asarray(sp.STAGE_SOURCES[stage], jnp.int32)
    b = batch["targets"].shape[0]
    state = sp.StageState.init(b, self.config.stm.num_slots, self.dim)
    if self.config.convergence.part_baseline == "context":
      part_ce_BxS = batch["context_ce"]
    batch = dict(batch, part_ce=np.asarray(part_ce_BxS, np.float32))
    sharded = shard_batch(self.mesh, batch)
    state = shard_batch(self.mesh, jax.tree.map(np.asarray, state))
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


# --- the experiment ----------------------------------------------------------------------------

def _batches(n: int, size: int):
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
    loaded = load_generator(config.model, dtype=config.dtype, seed=config.seed)
  except (ValueError, FileNotFoundError, KeyError) as e:
    raise cfg.ConfigError(f"model: {config.model!r}: {e}") from None
  return examples, loaded


def run(config, workdir: str, *, examples: list[qa.QAExample] | None = None,
        loaded: Loaded | None = None, log=print) -> dict:
  t_start = time.time()
  if examples is None or loaded is None:
    examples, loaded = prepare(config)
  else:
    validate(config)
  t_loaded = time.time()
  runner = Phase1a(loaded.model, loaded.tokenizer, config)
  tok = loaded.tokenizer
  enc = encode(examples, tok, config)
  n, b = len(examples), config.batch_size
  k, d = config.stm.num_slots, runner.dim
  log(f"phase 1a: {n} examples, K={k}, d={d}, {config.steps} steps x {config.num_restarts + 1} "
      f"rounds, model {loaded.name}, {jax.device_count()} devices")

  per_stage = {s: {"state": [], "curve": [], "ce_curve": []} for s in ("stage1", "stage2")}
  records, random_ce, context_ce, delta_zero_ce = [], [], [], []
  decoded = {m: [] for m in ("question", "answer", "zeroed", "shuffled", "no_memory", "oracle")}
  contents2 = []
  timings = {"stage1": 0.0, "stage2": 0.0, "baselines": 0.0, "stage3": 0.0}
  slack = config.decode.slack
  p_stm = (2 if runner.gen.bos_id is not None else 1) + k                 # [BOS] mode content
  t_max = enc.targets_NxSxT.shape[-1]
  m_new = t_max + slack
  for idx, valid in _batches(n, b):
    t0 = time.time()
    tg, mk = enc.targets_NxSxT[idx], enc.mask_NxSxT[idx]
    p_eval = max(enc.oracle_NxSxP.shape[-1], p_stm)
    rnd = runner.ce(runner.stm_prompts(runner.random_contents(idx, 0)), p_stm, tg, mk,
                    pad_to=p_eval)
    oracle_prompts = runner.text_prompts(enc.oracle_NxSxP[idx])
    ctx = runner.ce(oracle_prompts, enc.oracle_len_NxS[idx], tg, mk, pad_to=p_eval)
    random_ce.append(rnd)
    context_ce.append(ctx)
    timings["baselines"] += time.time() - t0
    batch = dict(targets=tg, mask=mk, index=idx.astype(np.int32), valid=valid,
                 random_ce=rnd.astype(np.float32), context_ce=ctx.astype(np.float32))
    part = np.full((len(idx), 2), np.inf, np.float32)
    for stage in ("stage1", "stage2"):
      if stage == "stage1" and not config.run_stage1:
        continue
      t0 = time.time()
      st, curve, ce_curve = runner.run_stage(stage, batch, part, log=log)
      timings[stage] += time.time() - t0
      per_stage[stage]["state"].append(st)
      per_stage[stage]["curve"].append(curve)
      per_stage[stage]["ce_curve"].append(ce_curve)
      if stage == "stage1":
        part = st["ce_BxS"]
    contents2.append(per_stage["stage2"]["state"][-1]["contents_BxCxKxD"][:, 0])

  # gather over batches (valid rows only)
  valid_all = np.concatenate([v for _, v in _batches(n, b)])
  cat = lambda xs: np.concatenate(xs, axis=0)[valid_all]
  random_ce, context_ce = cat(random_ce), cat(context_ce)
  st2 = {key: cat([s[key] for s in per_stage["stage2"]["state"]])
         for key in per_stage["stage2"]["state"][0]}
  st1 = ({key: cat([s[key] for s in per_stage["stage1"]["state"]])
          for key in per_stage["stage1"]["state"][0]} if config.run_stage1 else None)
  contents2 = cat(contents2)
  # the "shuffled" memory: example i reads the content of example i + 1 (of the whole set)
  shuffled2 = np.roll(contents2, -1, axis=0)

  # stage 3: greedy decoding from the joint content and the yardstick variants
  t0 = time.time()
  plen_nomem = 2 if runner.gen.bos_id is not None else 1                   # [BOS] A_mode
  for idx, valid in _batches(n, b):
    tg, mk = enc.targets_NxSxT[idx], enc.mask_NxSxT[idx]
    c2 = jnp.asarray(contents2[idx])
    mem = runner.stm_prompts(c2)                                           # B x S x P x D
    zero = runner.stm_prompts(jnp.zeros_like(c2))
    shuf = runner.stm_prompts(jnp.asarray(shuffled2[idx]))
    rows = jnp.concatenate([mem[:, 0], mem[:, 1], zero[:, 1], shuf[:, 1], mem[:, 1]], axis=0)
    plens = np.concatenate([np.full(4 * len(idx), p_stm), np.full(len(idx), plen_nomem)])
    toks = runner.decode(rows, plens, m_new).reshape(5, len(idx), m_new)
    oracle_prompts = runner.text_prompts(enc.oracle_NxSxP[idx][:, 1:])[:, 0]
    oracle_a = runner.decode(oracle_prompts, enc.oracle_len_NxS[idx][:, 1],
                             int(enc.target_len_NxS[:, 1].max()) + slack)
    # delta_zero: joint CE with the content zeroed over CE with the content
    delta_zero_ce.append(runner.ce(zero, p_stm, tg, mk, pad_to=p_eval))
    for j, i in enumerate(idx):
      if not valid[j]:
        continue
      lim = enc.target_len_NxS[i] if config.decode.truncate_to_target else (None, None)
      decoded["question"].append(_decode_text(tok, toks[0, j], runner.eos, lim[0]))
      for name, row in (("answer", 1), ("zeroed", 2), ("shuffled", 3), ("no_memory", 4)):
        decoded[name].append(_decode_text(tok, toks[row, j], runner.eos, lim[1]))
      decoded["oracle"].append(_decode_text(tok, oracle_a[j], runner.eos, lim[1]).split("\n")[0])
  timings["stage3"] += time.time() - t0
  zero_ce = cat(delta_zero_ce)

  def em(preds, which):
    return [qa.exact_match(p, getattr(ex, which)) for p, ex in zip(preds, examples)]
  acc = {m: em(decoded[m], "answer") for m in ("answer", "zeroed", "shuffled", "no_memory",
                                               "oracle")}
  q_em = em(decoded["question"], "question")
  f1 = [qa.token_f1(p, ex.answer) for p, ex in zip(decoded["answer"], examples)]

  ce2 = st2["ce_BxS"]
  joint2 = ce2.mean(-1)
  results = {
      "convergence_rate": float(st2["converged_BxC"][:, 0].mean()),
      "stage2_loss": _mean(joint2),
      "stage2_ratio_random": _mean(joint2 / random_ce.mean(-1)),
      "stage2_ratio_context": _mean(joint2 / context_ce.mean(-1)),
      "stage2_question_ratio_random": _mean(ce2[:, 0] / random_ce[:, 0]),
      "stage2_answer_ratio_random": _mean(ce2[:, 1] / random_ce[:, 1]),
      "stage2_question_ratio_context": _mean(ce2[:, 0] / context_ce[:, 0]),
      "stage2_answer_ratio_context": _mean(ce2[:, 1] / context_ce[:, 1]),
      "stage2_mean_attempts": float(st2["attempts_BxC"][:, 0].mean()),
      "random_loss": _mean(random_ce.mean(-1)),
      "context_loss": _mean(context_ce.mean(-1)),
  }
  if st1 is not None:
    ce1 = st1["ce_BxS"]
    results.update({
        "stage1_question_convergence_rate": float(st1["converged_BxC"][:, 0].mean()),
        "stage1_answer_convergence_rate": float(st1["converged_BxC"][:, 1].mean()),
        "stage1_question_ratio_random": _mean(ce1[:, 0] / random_ce[:, 0]),
        "stage1_answer_ratio_random": _mean(ce1[:, 1] / random_ce[:, 1]),
        "stage1_question_ratio_context": _mean(ce1[:, 0] / context_ce[:, 0]),
        "stage1_answer_ratio_context": _mean(ce1[:, 1] / context_ce[:, 1]),
        "stage2_question_ratio_stage1": _mean(ce2[:, 0] / ce1[:, 0]),
        "stage2_answer_ratio_stage1": _mean(ce2[:, 1] / ce1[:, 1]),
    })
  results.update({
      "accuracy": _mean(acc["answer"]),
      "accuracy_memory_zeroed": _mean(acc["zeroed"]),
      "accuracy_memory_shuffled": _mean(acc["shuffled"]) if n > 1 else None,
      "accuracy_no_memory": _mean(acc["no_memory"]),
      "accuracy_oracle": _mean(acc["oracle"]),
      "chance": qa.chance(config.data.source),
      "delta_zero": _mean(zero_ce.mean(-1) / joint2),
      "memory_cosine": float(sp.memory_cosine(jnp.asarray(contents2))) if n > 1 else None,
      "question_exact_match": _mean(q_em),
      "answer_f1": _mean(f1),
      "num_examples": n,
      "num_slots": k,
      "steps": config.steps,
      "num_restarts": config.num_restarts,
      "model": loaded.name,
      "data": config.data.source,
      "devices": jax.device_count(),
      "seconds": {"load": t_loaded - t_start, **timings, "total": time.time() - t_start},
      "compiles": dict(runner.traces),
  })
  if "gemma" in str(loaded.name).lower():
    results["notice"] = GEMMA_NOTICE

  if jax.process_index() == 0:
    _write(workdir, config, examples, enc, results, random_ce, context_ce, zero_ce, st1, st2,
           per_stage, decoded, acc, q_em, f1, contents2, runner, valid_all)
  return results


def _write(workdir, config, examples, enc, results, random_ce, context_ce, zero_ce, st1, st2,
           per_stage, decoded, acc, q_em, f1, contents2, runner, valid_all):
  os.makedirs(os.path.join(workdir, "examples"), exist_ok=True)
  lst = lambda x: [float(v) for v in np.asarray(x).ravel()]
  for i, ex in enumerate(examples):
    rec = {
        "id": ex.id, "context": ex.context, "question": ex.question, "answer": ex.answer,
        "random_ce": lst(random_ce[i]), "context_ce": lst(context_ce[i]),
        "stage2": {"ce": lst(st2["ce_BxS"][i]), "converged": bool(st2["converged_BxC"][i, 0]),
                   "attempts": int(st2["attempts_BxC"][i, 0]),
                   "ce_zeroed": lst(zero_ce[i])},
        "stage3": {"question": decoded["question"][i], "question_em": bool(q_em[i]),
                   "answer": decoded["answer"][i], "answer_em": bool(acc["answer"][i]),
                   "answer_f1": float(f1[i]),
                   **{f"answer_{m}": decoded[m][i] for m in ("zeroed", "shuffled", "no_memory",
                                                             "oracle")},
                   **{f"answer_{m}_em": bool(acc[m][i]) for m in ("zeroed", "shuffled",
                                                                  "no_memory", "oracle")}},
    }
    if st1 is not None:
      rec["stage1"] = {"ce": lst(st1["ce_BxS"][i]), "converged": [bool(v) for v in
                                                                 st1["converged_BxC"][i]],
                       "attempts": [int(v) for v in st1["attempts_BxC"][i]]}
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ex.id)
    with open(os.path.join(workdir, "examples", f"{safe}.json"), "w") as f:
      json.dump(rec, f, indent=1)
  arrays = {"stage2_content_NxKxD": contents2, "modes_SxD": np.asarray(runner.parts.modes_SxD),
            "targets_NxSxT": enc.targets_NxSxT, "ids": np.asarray([e.id for e in examples])}
  if st1 is not None:
    arrays["stage1_content_NxCxKxD"] = st1["contents_BxCxKxD"]
  np.savez(os.path.join(workdir, "content.npz"), **arrays)
  curves = {}
  for stage, v in per_stage.items():
    if not v["curve"]:
      continue
    # rounds x steps x B x C per batch; batches may stop after different numbers of rounds
    r = max(c.shape[0] for c in v["curve"])
    pad = lambda c: np.concatenate([c, np.full((r - c.shape[0],) + c.shape[1:], np.nan,
                                               c.dtype)], 0)
    curves[f"{stage}_loss"] = np.concatenate([pad(c) for c in v["curve"]], axis=2)[:, :, valid_all]
    curves[f"{stage}_ce"] = np.concatenate([pad(c) for c in v["ce_curve"]],
                                           axis=2)[:, :, valid_all]
  np.savez(os.path.join(workdir, "curves.npz"), **curves)
  yardstick.write_results(workdir, dict(results, config=json.loads(config.to_json_best_effort())))
