"""Latentem as a System: a compressor writes K latents from the removed tokens; a pretrained
reader (frozen, or with LoRA) reads [BOS | soft prompt | latents | kept tokens] and answers.

Params are only what trains, one group per reader "branch" (model.readers: "lora" and/or
"frozen", the first is the one the yardstick scores; the others train alongside and are scored
in extra_results): `<branch>_compressor`, `<branch>_adapters` (LoRA only), `<branch>_soft_prompt`,
`<branch>_probe`, `<branch>_recon`. The reader's own weights are System.frozen: never in params,
never in the optimizer or the checkpoint.

Objective per branch: the answer digit's cross-entropy through the reader (the ten digit tokens
at the last position; nothing pooled, no template embedding), plus the switches in
model.aux_losses:
  probe           a DigitProbe on the latents predicts the digit of each of the first S removed
                  statements from its question (a direct key -> digit signal to the compressor)
  contrastive     softplus(log p(answer | other example's latents) - log p(answer | own latents))
                  at the reader's answer logits (one more reader pass)
  reconstruction  a head rebuilds the removed tokens from the latents
  distill / kv_distill   latent k -> what statement k's digit token leaves in the frozen reader
                  reading the text (every layer's hidden state / the attention key and value at
                  model.kv_layers, where the reader's lookup heads find a digit)
  slots, binding  the answer loss for more removed statements; linear key/digit read-outs
  lookup          -log of the reader's attention (last position, mean over layers and heads) on
                  the asked statement's latent
With LoRA, the same adapter is also trained on the full prompt as text (model.oracle_batch
examples per step, weight model.oracle_weight), so the oracle is the same reader, adapted on
full-text prompts of the task for the same steps.

Debug switches (model.debug): update_check logs how far each trained group moved since the last
step and a checksum change of the reader's weights (0 unless something wrote to them);
grad_check logs the norm of the answer loss's gradient at the latents (the signal that reaches
the compressor through the reader). Always logged: the answer loss and accuracy per branch, the
latents' mean pairwise cosine across the batch (the conditioning check), the oracle loss, and
grad_norm/<group> (the loop's per-group gradient norms).
"""
from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from memjax.core import config as cfg
from memjax.core import yardstick
from memjax.core.system import System
from memjax.latentem import reader_loading
from memjax.latentem.compressor import LatentCompressor
from memjax.latentem.heads import BindingHead, DigitProbe, ReconstructionHead
from memjax.latentem.reader import Reader, scores
from memjax.layers import lora as lora_lib

READERS = ("lora", "frozen")
AUX_LOSSES = ("probe", "contrastive", "reconstruction", "distill", "slots", "binding", "lookup",
              "kv_distill")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="latentem", reader="gemma3-270m", readers=("lora", "frozen"),
      num_latents=8, dim=256, layers=2, heads=4, encoder_reader_layers=4, soft_prompt=0,
      lora_rank=8, lora_alpha=16.0, lora_targets=("q", "k", "v", "o"),
      aux_losses=("probe",), probe_weight=1.0, contrastive_weight=1.0,
      reconstruction_weight=0.1, probe_dim=128, distill_weight=1.0, slots_weight=1.0, binding_weight=1.0, slots_asked=4,
      lookup_weight=1.0, lora_b_init=0.0, kv_distill_weight=1.0, kv_layers=(5, 11),
      segment_pool=False, raw_embeddings=False, token_values=False, probe_detach=False,
      oracle_weight=1.0, oracle_batch=4, train_kept=0,
      debug=dict(update_check=False, grad_check=False)))


def validate(config) -> None:
  m, t = config.model, config.task
  root = config
  cfg.positive(root, "model.num_latents", "model.dim", "model.layers", "model.heads",
               "model.lora_rank", "model.probe_dim")
  cfg.non_negative(root, "model.soft_prompt", "model.encoder_reader_layers", "model.oracle_batch",
                   "model.oracle_weight", "model.train_kept")
  readers = tuple(m.readers)
  cfg.require(len(readers) >= 1 and len(set(readers)) == len(readers), "model.readers",
              f"one or more distinct readers, got {readers!r}")
  for r in readers:
    cfg.require(r in READERS, "model.readers", f"unknown reader {r!r}; choose from {READERS}")
  for a in m.aux_losses:
    cfg.require(a in AUX_LOSSES, "model.aux_losses",
                f"unknown auxiliary loss {a!r}; choose from {AUX_LOSSES}")
  for tgt in m.lora_targets:
    cfg.require(tgt in LORA_TARGETS, "model.lora_targets",
                f"unknown projection {tgt!r}; choose from {LORA_TARGETS}")
  cfg.require(m.reader == t.reader, "model.reader",
              f"{m.reader!r} differs from task.reader {t.reader!r}: the task must use the "
              "reader's own tokenizer")
  cfg.require(m.num_latents + m.soft_prompt < t.budget, "model.num_latents",
              f"{m.num_latents} latents (+ {m.soft_prompt} soft-prompt vectors) do not fit the "
              f"budget of {t.budget} tokens")
  cfg.require(m.num_latents < t.removed_tokens, "model.num_latents",
              f"{m.num_latents} latents for {t.removed_tokens} removed tokens is no compression")
  cfg.require(0 < m.slots_asked <= t.min_removed, "model.slots_asked",
              f"between 1 and task.min_removed={t.min_removed}, got {m.slots_asked}")
  if m.segment_pool or {"distill", "binding"} & set(m.aux_losses):
    cfg.require(m.num_latents == t.min_removed, "model.num_latents",
                f"one latent per statement (segment_pool / distill / binding) needs num_latents == "
                f"task.min_removed, got {m.num_latents} and {t.min_removed}")
  cfg.require(m.train_kept == 0 or m.train_kept < t.budget, "model.train_kept",
              f"{m.train_kept} must be 0 (all kept tokens) or below task.budget={t.budget}")
  pre = reader_loading.load(m.reader, t.get("reader_dtype", "float32"))
  reader_loading.check_reader(pre.model)
  n = pre.config.num_layers
  if "kv_distill" in m.aux_losses:
    cfg.require(len(m.kv_layers) > 0 and all(0 <= i < n for i in m.kv_layers), "model.kv_layers",
                f"layers of the reader (0..{n - 1}) for kv_distill, got {tuple(m.kv_layers)}")
  cfg.require(m.encoder_reader_layers <= n, "model.encoder_reader_layers",
              f"{m.encoder_reader_layers} exceeds the reader's {n} layers")


@flax.struct.dataclass
class LatentMemory:
  """K latent vectors per example in the reader's embedding space; the protocol's tree-wide
  defaults apply (zeroed: all zeros; shuffled: rows rolled by one; flat: B x K*D)."""
  latents_BxKxD: jax.Array


def _crop(ids_BxT, n):
  return ids_BxT[:, -n:] if n else ids_BxT


class Latentem:
  """Everything of the design as pure functions; `system()` wraps them as a System."""

  def __init__(self, config, task):
    self.config = config
    m = config.model
    self.m = m
    pre = reader_loading.load(m.reader, config.task.get("reader_dtype", "float32"))
    reader_loading.check_reader(pre.model)
    self.reader = Reader(pre, task.digit_ids, lora_scale=m.lora_alpha / m.lora_rank)
    self.frozen = self.reader.frozen
    self.task = task
    self.readers = tuple(m.readers)
    self.aux = tuple(m.aux_losses)
    d = self.reader.dim
    emb = np.asarray(self.reader.model(self.frozen).embed(jnp.arange(min(
        pre.config.vocab_size, 4096))[None]))[0]
    self.embed_rms = float(np.sqrt((emb ** 2).mean()))
    # Reconstruction classes: the token ids the task's removed parts use (+1: any other).
    rng = np.random.default_rng(0)
    seen = np.unique(np.concatenate([task.episode(rng, "train")["removed"] for _ in range(32)]))
    self.recon_ids = jnp.asarray(seen, jnp.int32)
    # Fixed per-dimension standardisation of the frozen features (statistics of 16 training
    # episodes): Gemma's hidden states share one huge component (measured: cosine 0.999 across
    # examples, centred norm 3% of the raw one), which would make every latent alike.
    sample = np.stack([task.episode(rng, "train")["removed"] for _ in range(16)])
    self.feat_mean, self.feat_std = 0.0, 1.0
    f = np.asarray(jax.jit(self._features)(self.frozen, sample))
    f = f.reshape(-1, f.shape[-1])
    self.feat_mean = jnp.asarray(f.mean(0))
    self.feat_std = jnp.asarray(f.std(0) + 1e-3)
    r = task.removed_tokens

    def build(rngs):
      c = LatentCompressor(f.shape[-1], d, num_latents=m.num_latents, dim=m.dim, layers=m.layers,
                           heads=m.heads, max_len=r, out_scale=self.embed_rms,
                           token_values=m.token_values, rngs=rngs)
      probe = DigitProbe(d, task.question_len, m.probe_dim, m.heads, rngs=rngs)
      recon = ReconstructionHead(d, r, len(seen) + 1, m.probe_dim, m.heads, rngs=rngs)
      bind = BindingHead(d, rngs=rngs)
      return c, probe, recon, bind
    self._build = build
    comp, probe, recon, bind = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    self.g_bind = nnx.graphdef(bind)
    self.g_comp = nnx.graphdef(comp)
    self.g_probe = nnx.graphdef(probe)
    self.g_recon = nnx.graphdef(recon)
    self.frozen_checksum = float(_checksum(self.frozen)) if m.debug.update_check else 0.0

  # --- params --------------------------------------------------------------------------------

  def init(self, rng):
    params = {}
    for i, b in enumerate(self.readers):
      k = jax.random.fold_in(rng, i)
      comp, probe, recon, bind = self._build(nnx.Rngs(k))
      params[f"{b}_compressor"] = nnx.state(comp, nnx.Param)
      if "probe" in self.aux:
        params[f"{b}_probe"] = nnx.state(probe, nnx.Param)
      if "reconstruction" in self.aux:
        params[f"{b}_recon"] = nnx.state(recon, nnx.Param)
      if "binding" in self.aux:
        params[f"{b}_binding"] = nnx.state(bind, nnx.Param)
      if self.m.soft_prompt:
        params[f"{b}_soft_prompt"] = self.embed_rms * jax.random.normal(
            jax.random.fold_in(k, 1), (self.m.soft_prompt, self.reader.dim))
      if b == "lora":
        params[f"{b}_adapters"] = lora_lib.init(
            jax.random.fold_in(k, 2), self.frozen, targets=tuple(self.m.lora_targets),
            rank=self.m.lora_rank, b_std=self.m.lora_b_init)
    return params

  def adapters(self, params, branch):
    return params.get(f"{branch}_adapters") if branch == "lora" else None

  # --- the pieces ----------------------------------------------------------------------------

  def _features(self, frozen, removed_BxR):
    """The frozen reader's hidden states of the removed tokens after encoder_reader_layers
    blocks (+ its raw token embeddings, model.raw_embeddings: distinct per token, where deep
    states share one huge component), standardised per dimension."""
    feats = self.reader.features(frozen, removed_BxR, self.m.encoder_reader_layers)
    if self.m.raw_embeddings and self.m.encoder_reader_layers:
      feats = jnp.concatenate([self.reader.embed(frozen, removed_BxR), feats], -1)
    return (feats - self.feat_mean) / self.feat_std

  def latents(self, params, branch, frozen, removed_BxR, segments_BxR=None):
    comp = nnx.merge(self.g_comp, params[f"{branch}_compressor"])
    return comp(self._features(frozen, removed_BxR),
                segments_BxR=segments_BxR if self.m.segment_pool else None,
                tokens_BxRxD=self.reader.embed(frozen, removed_BxR) if self.m.token_values
                else None)

  def read_memory(self, params, branch, frozen, kept_BxT, latents_BxKxD, lookup: bool = False):
    """Digit logits of the reader on [BOS | soft prompt | latents | kept] (latents None: no
    memory at all, [BOS | kept]); lookup: also the last position's attention over the latents
    (L x B x H x K, see Reader.digit_logits)."""
    b = kept_BxT.shape[0]
    parts = [self.reader.bos_embeds(frozen, b)]
    if latents_BxKxD is not None:
      if self.m.soft_prompt:
        soft = params[f"{branch}_soft_prompt"]
        parts.append(jnp.broadcast_to(soft, (b,) + soft.shape))
      parts.append(latents_BxKxD)
    parts.append(self.reader.embed(frozen, kept_BxT))
    span = (1 + self.m.soft_prompt, latents_BxKxD.shape[1]) if lookup else None
    return self.reader.digit_logits(frozen, self.adapters(params, branch),
                                    jnp.concatenate(parts, 1), lookup=span)

  def read_text(self, params, branch, frozen, ids_BxT, bos: bool = False):
    x = self.reader.embed(frozen, ids_BxT)
    if bos:
      x = jnp.concatenate([self.reader.bos_embeds(frozen, ids_BxT.shape[0]), x], 1)
    return self.reader.digit_logits(frozen, self.adapters(params, branch), x)

  # --- the System's functions for one branch ---------------------------------------------------

  def ingest(self, params, batch, *, frozen, branch):
    return LatentMemory(self.latents(params, branch, frozen, batch["removed"],
                                     batch.get("segments")))

  def answer(self, params, batch, memory, *, frozen, branch):
    lat = None if memory is None else memory.latents_BxKxD
    logits = self.read_memory(params, branch, frozen, batch["kept"], lat)
    loss, correct, count, _ = scores(logits, batch["answer"])
    return {"correct": correct, "count": count, "loss": loss}

  def oracle(self, params, batch, *, frozen, branch):
    logits = self.read_text(params, branch, frozen, batch["full"])
    loss, correct, count, _ = scores(logits, batch["answer"])
    return {"correct": correct, "count": count, "loss": loss}

  def summary(self, params, batch, *, frozen, branch):
    logits = self.read_text(params, branch, frozen, batch["summary"], bos=True)
    loss, correct, count, _ = scores(logits, batch["answer"])
    return {"correct": correct, "count": count, "loss": loss}

  def branch_loss(self, params, batch, frozen, branch, rng=None):
    m = self.m
    ans = batch["answer"]
    lat = self.latents(params, branch, frozen, batch["removed"], batch.get("segments"))
    kept = _crop(batch["kept"], m.train_kept)
    lookup = "lookup" in self.aux
    logits = self.read_memory(params, branch, frozen, kept, lat, lookup=lookup)
    if lookup:
      logits, probs = logits
    l_ans, correct, count, lp = scores(logits, ans)
    total = l_ans
    b = lat.shape[0]
    met = {f"{branch}/loss_answer": l_ans, f"{branch}/accuracy": correct / count,
           f"{branch}/memory_cosine": yardstick.memory_cosine(lat.reshape(b, -1))}
    if "probe" in self.aux:
      qe = self.reader.embed(frozen, batch["slot_questions"])
      # probe_detach: the probe only reads the latents (a measurement), never shapes them.
      plat = jax.lax.stop_gradient(lat) if m.probe_detach else lat
      plog = nnx.merge(self.g_probe, params[f"{branch}_probe"])(qe, plat)
      l_probe = optax.softmax_cross_entropy_with_integer_labels(plog, batch["slot_digits"]).mean()
      total += m.probe_weight * l_probe
      met[f"{branch}/loss_probe"] = l_probe
      met[f"{branch}/accuracy_probe"] = (plog.argmax(-1) == batch["slot_digits"]).mean()
    if "contrastive" in self.aux:
      wrong = self.read_memory(params, branch, frozen, kept, jnp.roll(lat, 1, axis=0))
      lp_w = scores(wrong, ans)[3]
      l_con = jax.nn.softplus(lp_w - lp).mean()
      total += m.contrastive_weight * l_con
      met[f"{branch}/loss_contrastive"] = l_con
    if "reconstruction" in self.aux:
      rec = nnx.merge(self.g_recon, params[f"{branch}_recon"])(lat)
      ids = batch["removed"]
      pos = jnp.searchsorted(self.recon_ids, ids)
      pos = jnp.minimum(pos, self.recon_ids.shape[0] - 1)
      cls = jnp.where(self.recon_ids[pos] == ids, pos, self.recon_ids.shape[0])
      l_rec = optax.softmax_cross_entropy_with_integer_labels(rec, cls).mean()
      total += m.reconstruction_weight * l_rec
      met[f"{branch}/loss_reconstruction"] = l_rec
    if "binding" in self.aux:
      logit = nnx.merge(self.g_bind, params[f"{branch}_binding"])(lat)
      keys, dig = batch["slot_keys"], batch["slot_digits"]
      want = jnp.stack([keys // 10, keys % 10, dig], -1)
      l_bind = optax.softmax_cross_entropy_with_integer_labels(logit, want).mean()
      total += m.binding_weight * l_bind
      hit = logit.argmax(-1) == want
      met[f"{branch}/loss_binding"] = l_bind
      met[f"{branch}/accuracy_binding_digit"] = hit[..., 2].mean()
      met[f"{branch}/accuracy_binding_key"] = hit[..., :2].all(-1).mean()
    if lookup:
      l_lk, a_lk = lookup_loss(probs, batch["asked_slot"])
      total += m.lookup_weight * l_lk
      met[f"{branch}/loss_lookup"] = l_lk
      met[f"{branch}/accuracy_lookup"] = a_lk
    if "slots" in self.aux:
      rng = jax.random.key(0) if rng is None else rng
      l_sl, a_sl, lk = self.slots_loss(params, branch, frozen, batch, lat, rng)
      total += m.slots_weight * l_sl
      met[f"{branch}/loss_slots"] = l_sl
      met[f"{branch}/accuracy_slots"] = a_sl
      if lk is not None:
        total += m.lookup_weight * lk[0]
        met[f"{branch}/loss_lookup_slots"], met[f"{branch}/accuracy_lookup_slots"] = lk
    if "kv_distill" in self.aux:
      l_kv = self.kv_distill_loss(frozen, batch, lat)
      total += m.kv_distill_weight * l_kv
      met[f"{branch}/loss_kv_distill"] = l_kv
    if "distill" in self.aux:
      l_dis = self.distill_loss(frozen, batch, lat)
      total += m.distill_weight * l_dis
      met[f"{branch}/loss_distill"] = l_dis
    if branch == "lora" and m.oracle_batch and m.oracle_weight:
      n = min(m.oracle_batch, b)
      full = jnp.concatenate([batch["removed"][:n], kept[:n]], 1)
      l_or, c_or, n_or, _ = scores(self.read_text(params, branch, frozen, full), ans[:n])
      total += m.oracle_weight * l_or
      met[f"{branch}/loss_oracle"] = l_or
      met[f"{branch}/accuracy_oracle"] = c_or / n_or
    if m.debug.grad_check:
      g = jax.grad(lambda x: scores(self.read_memory(params, branch, frozen, kept, x), ans)[0])(
          jax.lax.stop_gradient(lat))
      met[f"{branch}/grad_norm_at_latents"] = jnp.linalg.norm(g)
    return total, met

  def distill_loss(self, frozen, batch, lat_BxKxD):
    """Latent k, read by the frozen reader after [BOS | latents < k], should leave the hidden
    states that statement k's digit token leaves when the reader reads the removed text (every
    block's output): there, the reader holds the digit together with its key (what its own
    induction copies from), so a latent that mimics them is one the reader already knows how
    to read. Squared error per layer over the teacher's spread across the batch and slots."""
    b = lat_BxKxD.shape[0]
    teacher = self.reader.layer_states(frozen, self.reader.embed(frozen, batch["removed"]))
    idx = batch["digit_pos"][None, :, :, None]
    teacher = jax.lax.stop_gradient(jnp.take_along_axis(teacher, idx, axis=2))  # L x B x S x D
    x = jnp.concatenate([self.reader.bos_embeds(frozen, b), lat_BxKxD.astype(teacher.dtype)], 1)
    student = self.reader.layer_states(frozen, x)[:, :, 1:]
    spread = ((teacher - teacher.mean((1, 2), keepdims=True)) ** 2).sum(-1).mean((1, 2))
    err = ((student - teacher) ** 2).sum(-1).mean((1, 2))
    return (err / (spread + 1e-6)).mean()

  def kv_distill_loss(self, frozen, batch, lat_BxKxD):
    """Latent k, read by the frozen reader after [BOS | latents < k], should give the attention
    key and value that statement k's digit token gives when the reader reads the removed text,
    at the layers model.kv_layers: where the reader's own lookup heads find the asked digit in
    text (measured on Gemma 3 270M: layer 5 head 1 and layer 11 head 2 put 0.31 / 0.43 of the
    question's attention on the asked digit, 0.05 / 0.01 on the others). A latent with the key
    and value of "KEY05 = 8"'s digit there is one those heads already look up. Squared error
    per layer over the teacher's spread across the batch and slots; keys before RoPE."""
    b = lat_BxKxD.shape[0]
    layers = jnp.asarray(self.m.kv_layers)
    upto = max(self.m.kv_layers) + 1      # the blocks above the last distilled layer never run
    k_t, v_t = self.reader.kv_states(frozen, self.reader.embed(frozen, batch["removed"]), upto)
    idx = batch["digit_pos"][None, :, :, None, None]
    teach = [jax.lax.stop_gradient(jnp.take_along_axis(z[layers], idx, axis=2))
             for z in (k_t, v_t)]   # L x B x S x K x D
    x = jnp.concatenate([self.reader.bos_embeds(frozen, b), lat_BxKxD.astype(k_t.dtype)], 1)
    k_s, v_s = self.reader.kv_states(frozen, x, upto)
    out = 0.0
    for t, s in zip(teach, (k_s, v_s)):
      s = s[layers][:, :, 1:]
      spread = ((t - t.mean((1, 2), keepdims=True)) ** 2).sum((-2, -1)).mean((1, 2))
      err = ((s - t) ** 2).sum((-2, -1)).mean((1, 2))
      out += (err / (spread + 1e-6)).mean() / 2
    return out

  def slots_loss(self, params, branch, frozen, batch, lat_BxKxD, rng):
    """The answer loss for more questions per memory: model.slots_asked of the first S removed
    statements (drawn per example), each read as [BOS | latents | its question] alone. The asked
    question gives one statement a gradient per example and step; this gives several, and
    without the kept text, so the reader's only way to the digit is the latents."""
    b, s = batch["slot_digits"].shape
    n = self.m.slots_asked
    pick = jax.vmap(lambda k: jax.random.permutation(k, s)[:n])(jax.random.split(rng, b))
    qry = jnp.take_along_axis(batch["slot_queries"], pick[:, :, None], 1).reshape(b * n, -1)
    ans = jnp.take_along_axis(batch["slot_digits"], pick, 1).reshape(b * n)
    lat = jnp.repeat(lat_BxKxD, n, axis=0)
    out = self.read_memory(params, branch, frozen, qry, lat, lookup="lookup" in self.aux)
    lk = None
    if "lookup" in self.aux:
      out, probs = out
      lk = lookup_loss(probs, pick.reshape(b * n))
    loss, correct, count, _ = scores(out, ans)
    return loss, correct / count, lk

  def loss(self, params, batch, memory, aux, rng, *, frozen):
    total, metrics = 0.0, {}
    for branch in self.readers:
      l, met = self.branch_loss(params, batch, frozen, branch, rng)
      total += l
      metrics.update(met)
    if self.m.debug.update_check:
      for k, v in params.items():
        metrics[f"update/{k}"] = optax.global_norm(jax.tree.map(jnp.subtract, v, aux[k]))
      metrics["update/reader_checksum"] = jnp.abs(_checksum(frozen) - self.frozen_checksum)
      aux = jax.lax.stop_gradient(params)
    return total, (metrics, memory, aux)

  def init_aux(self):
    if not self.m.debug.update_check:
      return ()
    shapes = jax.eval_shape(self.init, jax.random.key(0))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def system(self, branch: str | None = None, extra: bool = False) -> System:
    branch = branch or self.readers[0]
    part = lambda f: functools.partial(f, branch=branch)
    return System(init=self.init, loss=self.loss, ingest=part(self.ingest),
                  answer=part(self.answer), oracle=part(self.oracle), init_aux=self.init_aux,
                  extra_results=self.extra_results if extra else None, frozen=self.frozen,
                  graphdef=self.g_comp)

  # --- eval extras ---------------------------------------------------------------------------

  def extra_results(self, params, batches) -> dict:
    """The other branches' yardsticks (prefixed), both oracles and summaries, the linear probe
    of the asked digit from the latents, per branch."""
    batches = list(batches)
    out = {}
    for branch in self.readers:
      if branch != self.readers[0]:
        res = yardstick.evaluate(self.system(branch), params, batches, self.task.chance)
        out.update({f"{branch}_reader/{k}": v for k, v in res.items()})
      out.update({f"{branch}_reader/{k}": v for k, v in
                  linear_probe(self, params, branch, batches).items()})
    fn = _text_modes_fn(self)
    sums = {}
    for batch in batches:
      for k, v in fn(params, batch, self.frozen).items():
        sums[k] = sums.get(k, 0.0) + float(v)
    for k in list(sums):
      if k.endswith("/correct"):
        name = k[:-len("/correct")]
        out[f"accuracy_{name}"] = sums[k] / max(sums[f"{name}/count"], 1.0)
    out.update(self.task.copy_baselines("eval"))
    out["num_latents"] = self.m.num_latents
    out["budget"] = self.task.budget
    return out


def lookup_loss(probs_LxBxHxK, asked_B):
  """-log of the attention mass on the asked latent, averaged over the reader's layers and
  heads (so the heads already looking at it get most of the gradient), and how often the
  latent with the most attention summed over layers and heads is the asked one."""
  p = jnp.take_along_axis(probs_LxBxHxK, asked_B[None, :, None, None], -1)[..., 0]
  loss = -jnp.log(p.mean((0, 2)) + 1e-9).mean()
  hit = (probs_LxBxHxK.sum((0, 2)).argmax(-1) == asked_B).mean()
  return loss, hit


def _checksum(tree):
  return sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(tree))


@functools.lru_cache(maxsize=8)
def _text_modes_fn(lt: Latentem):
  """oracle and summary with the frozen reader and (if trained) the LoRA reader."""
  def fn(params, batch, frozen):
    out = {}
    for branch in ("frozen", "lora"):
      if branch == "lora" and "lora" not in lt.readers:
        continue
      for mode in ("oracle", "summary"):
        r = getattr(lt, mode)(params, batch, frozen=frozen, branch=branch)
        out[f"{mode}_{branch}/correct"] = r["correct"]
        out[f"{mode}_{branch}/count"] = r["count"]
    return out
  return jax.jit(fn)


def linear_probe(lt: Latentem, params, branch, batches, ridge: float = 1.0) -> dict:
  """A linear (ridge, one-vs-rest) probe per statement slot from the flattened latents to that
  statement's digit, fitted on the first half of the episodes and tested on the second; the
  asked digit is read with the asked slot's probe. Chance 0.1."""
  fn = jax.jit(lambda p, x, s, frozen: lt.latents(p, branch, frozen, x, s))
  xs, digits, asked = [], [], []
  for b in batches:
    xs.append(np.asarray(fn(params, b["removed"], b["segments"], lt.frozen)).reshape(
        len(b["removed"]), -1))
    digits.append(np.asarray(b["slot_digits"]))
    asked.append(np.asarray(b["asked_slot"]))
  x, d, a = np.concatenate(xs), np.concatenate(digits), np.concatenate(asked)
  n = len(x) // 2
  if n < 2:
    return {}
  mu, sd = x[:n].mean(0), x[:n].std(0) + 1e-6
  xa, xb = (x[:n] - mu) / sd, (x[n:] - mu) / sd
  gram = xa @ xa.T
  inv = np.linalg.solve(gram + ridge * x.shape[1] / 100 * np.eye(n), np.eye(n))
  k_b = xb @ xa.T
  preds = []
  for j in range(d.shape[1]):
    y = np.eye(10)[d[:n, j]] - 0.1
    preds.append((k_b @ (inv @ y)).argmax(-1))
  preds = np.stack(preds, 1)  # (n_test, S)
  slot_acc = float((preds == d[n:]).mean())
  asked_acc = float((preds[np.arange(len(preds)), a[n:]] == d[n:][np.arange(len(preds)),
                                                                  a[n:]]).mean())
  return {"probe_asked_digit_accuracy": asked_acc, "probe_slot_accuracy": slot_acc,
          "probe_episodes": int(len(x))}


def make_system(config, task) -> System:
  return Latentem(config, task).system(extra=True)
