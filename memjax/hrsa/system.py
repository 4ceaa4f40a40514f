"""HRSA-TRM as a System for the generic loop: loss with remedies, guardrails, yardstick modes.

Loss = mean LM cross-entropy over LM examples + `retrieval_weight` * mean cross-entropy of
the answer over retrieval examples (+ remedy losses). Metrics per step: loss_lm,
loss_retrieval, retrieval_em, adversarial_em, delta_zero, sim_gap, memory_share
(share of the decoder's residual update at the answer that comes from memory
cross-attention, averaged over layers), and with `model.grad_split` the gradient norm
reaching decoder cross-attention vs self-attention parameters (an extra backward pass).
"""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax.core import config as cfg
from memjax.core import losses
from memjax.core import memory as memory_lib
from memjax.core import yardstick
from memjax.core.config import ConfigError
from memjax.hrsa import diagnose
from memjax.hrsa import guardrails
from memjax.layers.local_attention import BACKENDS as LOCAL_BACKENDS
from memjax.hrsa.diffusion import check_cascade
from memjax.hrsa.diffusion import regions
from memjax.hrsa.model import DecodeControl
from memjax.hrsa.model import HRSAConfig
from memjax.hrsa.model import HRSATRM
from memjax.hrsa import remedies as remedies_lib
from memjax.hrsa import tasks as tasks_lib
from memjax.core.system import System

MODEL_FIELDS = tuple(f for f in HRSAConfig.__dataclass_fields__)
READ_PATH_FIELDS = ("doc", "tokens", "src_start", "answer")


def model_config(config, vocab_size: int) -> HRSAConfig:
  m = config.model
  kw = {k: m[k] for k in MODEL_FIELDS if k in m and k != "vocab_size"}
  if "slots" in kw:
    kw["slots"] = tuple(int(s) for s in kw["slots"])
  return HRSAConfig(vocab_size=vocab_size, **kw)


def validate(config) -> None:
  m = config.model
  try:
    check_cascade(tuple(cfg.get(config, "model.slots")))
  except (ValueError, TypeError) as e:
    raise ConfigError(f"model.slots: {e}") from None
  cfg.positive(config, "model.dim", "model.heads", "model.denoise_steps", "model.trm_n",
               "model.trm_cycles", "model.ctx", "model.enc_chunk", "model.max_context")
  cfg.non_negative(config, "model.enc_halo")
  if "write_slots" in m:
    cfg.non_negative(config, "model.write_slots")
  if "enc_token_block" in m:
    cfg.non_negative(config, "model.enc_token_block")
  for k in ("enc_shift", "dec_shift"):
    w = m.get(k, 1)
    cfg.require(isinstance(w, int) and w >= 1, f"model.{k}", f"must be an integer >= 1, got {w!r}")
  cfg.require(m.dim % m.heads == 0, "model.dim", f"{m.dim} is not divisible by heads={m.heads}")
  cfg.one_of(config, "model.schedule", ("cosine", "linear"))
  if "attention_backend" in m:
    cfg.one_of(config, "model.attention_backend", LOCAL_BACKENDS)
  doc_len = cfg.get(config, "task.doc_len", 256)
  cfg.require(doc_len <= m.max_context, "task.doc_len",
              f"context of {doc_len} tokens exceeds the encoder's model.max_context={m.max_context}")
  remedies_lib.parse(m.get("remedies", ()), m.get("remedy", None))


def make_system(config, task) -> System:
  mc = model_config(config, task.vocab_size)
  rem = remedies_lib.parse(config.model.get("remedies", ()), config.model.get("remedy", None))
  retrieval_weight = float(config.model.get("retrieval_weight", 1.0))
  grad_split = bool(config.model.get("grad_split", False))
  write_weight = float(config.model.get("write_loss", 0.0))
  bag_weight = float(config.model.get("bag_loss", 0.0))
  write_slots = int(config.model.get("write_slots", 0))   # 0: every M2 slot
  collapse = guardrails.CollapseConfig(**dict(config.model.get("collapse", {})))
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: HRSATRM(mc, rngs=nnx.Rngs(0))), nnx.Param)
  s2 = mc.slots[-1]

  def init(rng):
    return nnx.split(HRSATRM(mc, rngs=nnx.Rngs(params=rng)), nnx.Param)[1]

  default_knobs = remedies_lib.knobs(rem, mc.ctx)
  n_retr_of = lambda retr: jnp.maximum(retr.sum(), 1)

  def forward(params, batch, rng):
    model = nnx.merge(graphdef, params)
    kn = batch.get("knobs", default_knobs)
    k_noise, k_ablate, k_route = jax.random.split(rng, 3)
    b = batch["doc"].shape[0]
    memory, reads = model.ingest(batch["doc"], k_noise)
    window = jnp.full((b,), kn["window"], jnp.int32)
    drop = jax.random.uniform(k_ablate, (b,)) < kn["ablate_p"]
    window = jnp.where(drop, jnp.minimum(window, kn["ablate_keep"]), window)
    stop_self = jax.random.uniform(k_route) < kn["route_p"]
    control = DecodeControl(window_B=window, stop_self_grad=stop_self)
    logits, aux = model.decoder(batch["tokens"], memory, control)
    return model, memory, reads, control, logits, aux, kn

  def core_loss(params, batch, rng):
    model, memory, reads, control, logits, aux, kn = forward(params, batch, rng)
    retr = batch["is_retrieval"]
    w = batch["weights"]
    nll = losses.token_nll(logits, batch["targets"])
    lm_w = w * (~retr)[:, None]
    loss_lm = (nll * lm_w).sum() / jnp.maximum(lm_w.sum(), 1.0)
    ans_nll = nll[:, -1]
    n_retr = n_retr_of(retr)
    loss_retr = jnp.where(retr, ans_nll, 0.0).sum() / n_retr
    loss = loss_lm + retrieval_weight * loss_retr
    metrics = {"loss_lm": loss_lm, "loss_retrieval": loss_retr}
    if mc.lm_reference:
      # The no-memory reference decoder: same batches, same LM + answer objective, full
      # window, no memory; its parameters are disjoint from the model's, so this term moves
      # only them (they share the optimizer's global-norm clip, nothing else).
      ref_logits, _ = model.reference(batch["tokens"], None, DecodeControl())
      ref_nll = losses.token_nll(ref_logits, batch["targets"])
      ref_lm = (ref_nll * lm_w).sum() / jnp.maximum(lm_w.sum(), 1.0)
      ref_retr = jnp.where(retr, ref_nll[:, -1], 0.0).sum() / n_retr_of(retr)
      loss = loss + ref_lm + retrieval_weight * ref_retr
      metrics.update(loss_lm_reference=ref_lm, loss_retrieval_reference=ref_retr)

    # Supervised attention: always computed (cheap), weighted by its knob (0 when off).
    # Target: how much each M2 slot read from the answer's source fact (its 4 tokens).
    probs = reads[-1]
    pos = jnp.arange(batch["doc"].shape[1])
    src = batch["src_start"][:, None]
    in_fact_BxN = ((pos[None] >= src) & (pos[None] < src + 4)).astype(jnp.float32)
    if mc.local_read:   # probs BxHxSxR over each slot's own region
      mass_BxS = jnp.einsum("bhsr,bsr->bs", probs, regions(in_fact_BxN, s2)) / probs.shape[1]
    else:               # probs BxHxSxN over the whole input
      mass_BxS = jnp.einsum("bhsn,bn->bs", probs, in_fact_BxN) / probs.shape[1]
    target = jax.lax.stop_gradient(mass_BxS / jnp.maximum(mass_BxS.sum(-1, keepdims=True), 1e-9))
    dec_BxS = aux["mem_probs"][-1][:, :, -1, -s2:].mean(1)                            # M2 part
    sup = -(target * jnp.log(dec_BxS + 1e-9)).sum(-1)
    loss_sup = jnp.where(retr, sup, 0.0).sum() / n_retr
    loss = loss + kn["attn_sup"] * loss_sup

    # Contrastive: a second decoder pass on another example's memory, only when switched on.
    def contrast():
      wrong_logits, _ = model.decoder(batch["tokens"], memory_lib.shuffled(memory), control)
      lp_wrong = -losses.token_nll(wrong_logits[:, -1], batch["answer"])
      con = jax.nn.softplus(lp_wrong + ans_nll)
      return jnp.where(retr, con, 0.0).sum() / n_retr

    loss_con = jax.lax.cond(kn["contrastive"] > 0, contrast, lambda: jnp.zeros((), jnp.float32))
    loss = loss + kn["contrastive"] * loss_con
    metrics.update(loss_attn_sup=loss_sup, loss_contrastive=loss_con)

    if write_weight or bag_weight:
      # Write losses: the M2 slots must hold what their input regions say.
      slots_BxSxD = model.decoder.memory_tokens(memory)[:, -s2:]
      region_BxSxR = regions(batch["doc"], s2, fill=-1)
      if 0 < write_slots < s2:
        # A random subset of the M2 slots per step (the same for the whole batch): an unbiased
        # estimate of the write loss at write_slots / S2 of its cost (the write head is a
        # quarter of a 2,048-token training step with 256 slots).
        idx = jax.random.choice(jax.random.fold_in(rng, 7), s2, (write_slots,), replace=False)
        slots_BxSxD, region_BxSxR = slots_BxSxD[:, idx], region_BxSxR[:, idx]
    if write_weight:  # rebuild the region token by token (see WriteHead)
      logits_w = model.write_head(slots_BxSxD, region_BxSxR.shape[-1], model.embed)
      # PAD (a length curriculum's empty prefix) is nothing to remember: counted, the empty
      # slots would dilute the text slots' share of the loss by the padded fraction.
      valid = (region_BxSxR >= 0) & (region_BxSxR != tasks_lib.PAD)
      nll_w = losses.token_nll(logits_w, jnp.maximum(region_BxSxR, 0))
      loss_write = jnp.where(valid, nll_w, 0.0).sum() / jnp.maximum(valid.sum(), 1)
      loss = loss + write_weight * loss_write
      metrics["loss_write"] = loss_write
    if bag_weight:
      # The first design's write loss: the bag of the region's tokens through the tied
      # embedding. Off by default; alone the frequent text tokens crowded the facts out, and
      # beside the write head it gained nothing (BUILD_NOTES.md, HRSA-TRM).
      logp = jax.nn.log_softmax(model.embed.attend(slots_BxSxD).astype(jnp.float32), -1)
      onehot = jax.nn.one_hot(region_BxSxR, logp.shape[-1])  # BxSxRxV
      bag = onehot.sum(2) / jnp.maximum(onehot.sum((2, 3))[..., None], 1.0)
      loss_bag = -(bag * logp).sum(-1).mean()
      loss = loss + bag_weight * loss_bag
      metrics["loss_bag"] = loss_bag
    return loss, (metrics, memory, logits, aux, control)

  def loss_fn(params, batch, memory, guard: guardrails.GuardState, rng):
    del memory   # HRSA's memory is written per batch, not carried
    loss, (metrics, memory, logits, aux, control) = core_loss(params, batch, rng)
    model = nnx.merge(graphdef, params)
    retr = batch["is_retrieval"]
    # Guardrails (no gradient).
    zl, _ = model.decoder(batch["tokens"], memory_lib.zeroed(memory), control)
    ans = batch["answer"]
    nll_mem = losses.token_nll(logits[:, -1], ans)
    nll_zero = losses.token_nll(zl[:, -1], ans)
    n_retr = jnp.maximum(retr.sum(), 1)
    dz = jax.lax.stop_gradient(guardrails.delta_zero(
        jnp.where(retr, nll_zero, 0.0).sum() / n_retr, jnp.where(retr, nll_mem, 0.0).sum() / n_retr))
    slots = jax.lax.stop_gradient(jnp.concatenate(memory.levels, axis=1))
    gap = guardrails.sim_gap(slots)
    c, n = losses.exact_match(logits[:, -1], ans, retr)
    ca, na = losses.exact_match(logits[:, -1], ans, retr & batch["adversarial"])
    norm = lambda xs: jnp.mean(jnp.stack([jnp.linalg.norm(x[:, -1], axis=-1) for x in xs]), 0)
    ms, ss = norm(aux["mem_out"]), norm(aux["self_out"])
    share = jnp.where(retr, ms / jnp.maximum(ms + ss, 1e-9), 0.0).sum() / n_retr
    metrics.update(delta_zero=dz, sim_gap=gap, retrieval_em=c / jnp.maximum(n, 1.0),
                   adversarial_em=ca / jnp.maximum(na, 1.0), memory_share=share)
    if grad_split:
      g = jax.grad(lambda p: core_loss(p, batch, rng)[0])(jax.lax.stop_gradient(params))
      sq = {"xattn": 0.0, "self": 0.0}
      for path, leaf in jax.tree_util.tree_leaves_with_path(g):
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if "decoder" in keys and "xattn" in keys:
          sq["xattn"] = sq["xattn"] + jnp.sum(leaf ** 2)
        elif "decoder" in keys and "attn" in keys:
          sq["self"] = sq["self"] + jnp.sum(leaf ** 2)
      metrics["grad_norm_xattn"] = jnp.sqrt(sq["xattn"])
      metrics["grad_norm_self_attn"] = jnp.sqrt(sq["self"])
    guard, collapsed = guardrails.check_collapse(guard, gap, dz, collapse)
    metrics["collapsed"] = collapsed.astype(jnp.float32)
    if collapse.stop:
      metrics["stop"] = collapsed.astype(jnp.float32)
    return loss, (metrics, (), guard)

  def ingest(params, batch):
    return nnx.merge(graphdef, params).ingest(batch["doc"], jax.random.key(0))[0]

  def answer(params, batch, memory):
    """The retrieval examples' answer token, read from `memory` (None: decoder alone)."""
    model = nnx.merge(graphdef, params)
    kn = batch.get("knobs", default_knobs)
    window = jnp.full((batch["doc"].shape[0],), kn["window"], jnp.int32)
    logits, _ = model.decoder(batch["tokens"], memory, DecodeControl(window_B=window))
    retr = jnp.asarray(batch["is_retrieval"])
    c, n = losses.exact_match(logits[:, -1], batch["answer"], retr)
    nll = losses.token_nll(logits[:, -1], batch["answer"])
    return {"correct": c, "count": n, "loss": losses.masked_mean(nll, retr)}

  @jax.jit
  def adversarial(params, batch):
    memory = ingest(params, batch)
    out = answer(params, batch, memory)
    if "inside" in batch:   # the same answers, split by where the asked-for fact lies
      inside = jnp.asarray(batch["inside"]) & jnp.asarray(batch["is_retrieval"])
      model = nnx.merge(graphdef, params)
      window = jnp.full((batch["doc"].shape[0],), default_knobs["window"], jnp.int32)
      logits, _ = model.decoder(batch["tokens"], memory, DecodeControl(window_B=window))
      out["correct_inside"], out["count_inside"] = losses.exact_match(
          logits[:, -1], batch["answer"], inside)
    return out, guardrails.sim_gap(jnp.concatenate(memory.levels, 1))

  read_path = jax.jit(functools.partial(diagnose.read_path, graphdef))

  @jax.jit
  def lm_losses(params, batch):
    """Summed LM NLL over the scored positions: with memory, memory zeroed, reference."""
    model = nnx.merge(graphdef, params)
    memory = ingest(params, batch)
    w = jnp.asarray(batch["weights"]) * (~jnp.asarray(batch["is_retrieval"]))[:, None]
    def nll_sum(decoder, mem):
      logits, _ = decoder(batch["tokens"], mem, DecodeControl())
      return (losses.token_nll(logits, batch["targets"]) * w).sum()
    out = {"n": w.sum(), "memory": nll_sum(model.decoder, memory),
           "zeroed": nll_sum(model.decoder, memory_lib.zeroed(memory))}
    if mc.lm_reference:
      out["reference"] = nll_sum(model.reference, None)
    return out

  def extra_results(params, batches):
    t = config.train
    bs = t.get("eval_batch_size", t.batch_size)
    split = lambda name: itertools.islice(iter(task.batches(name, bs, t.seed)), t.eval_batches)
    sums = {}
    for b in split("adversarial"):
      out, _ = adversarial(params, b)
      for k, v in out.items():
        if k.startswith(("correct", "count")):
          sums[k] = sums.get(k, 0.0) + float(v)
    gaps = [float(adversarial(params, b)[1]) for b in itertools.islice(batches, 2)]
    res = {"accuracy_adversarial": sums["correct"] / max(sums["count"], 1.0),
           "sim_gap": float(np.mean(gaps)) if gaps else None}
    if getattr(task, "inside_fraction", 0.0) > 0:
      # The yardstick again, on facts beyond the decoder's local context and inside it.
      for where in ("beyond", "inside"):
        r = yardstick.evaluate(system, params, list(split(f"eval_{where}")), task.chance)
        for k in ("accuracy", "accuracy_memory_zeroed", "accuracy_memory_shuffled",
                  "accuracy_no_memory", "delta_zero"):
          res[k.replace("accuracy", f"accuracy_{where}") if k.startswith("accuracy")
              else f"{k}_{where}"] = r.get(k)
      if mc.write_head:
        # Where the answers beyond the local context are lost (memjax.hrsa.diagnose).
        rows, keep = {}, []
        for b in split("eval_beyond"):
          for k, v in read_path(params, {k: b[k] for k in READ_PATH_FIELDS}).items():
            rows.setdefault(k, []).append(np.asarray(v))
          keep.append(np.asarray(b["is_retrieval"]))
        rows = {k: np.concatenate(v) for k, v in rows.items()}
        for k, v in diagnose.summarise(rows, np.concatenate(keep)).items():
          res[f"read_path_beyond_{k}"] = v
      cnt_in = sums.get("count_inside", 0.0)
      res["accuracy_adversarial_inside"] = sums.get("correct_inside", 0.0) / max(cnt_in, 1.0)
      res["accuracy_adversarial_beyond"] = ((sums["correct"] - sums.get("correct_inside", 0.0))
                                            / max(sums["count"] - cnt_in, 1.0))
    if mc.lm_reference or getattr(task, "lm_after_doc", False):
      # LM loss on held-out documents (eval bindings), every position of each LM example.
      tot = {}
      for b in split("eval_lm"):
        for k, v in lm_losses(params, b).items():
          tot[k] = tot.get(k, 0.0) + float(v)
      n = max(tot.get("n", 0.0), 1.0)
      res["loss_lm_heldout"] = tot["memory"] / n
      res["loss_lm_heldout_memory_zeroed"] = tot["zeroed"] / n
      res["loss_lm_uniform"] = float(np.log(task.vocab_size))
      if mc.lm_reference:
        res["loss_lm_heldout_reference"] = tot["reference"] / n
        res["lm_loss_ratio_to_reference"] = tot["memory"] / max(tot["reference"], 1e-12)
    return res

  system = System(init=init, loss=loss_fn, ingest=ingest, answer=answer,
                init_aux=guardrails.GuardState.init, extra_results=extra_results,
                stop_reason="memory collapse guardrail (model.collapse.stop): sim_gap and "
                            "delta_zero stayed below their floors",
                graphdef=graphdef)
  return system
