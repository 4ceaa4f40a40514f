"""Dynamic Context Memory: the STM soft prompt and its content optimizer (phase 1a).

The STM is a fixed-size embedding buffer read by a frozen pretrained LLM (the
Generator) as a soft prompt: K content slots plus one mode slot. Phase 1a asks
whether one content can serve two outputs:

    [BOS] [Q_mode | content] -> Generator -> question tokens
    [BOS] [A_mode | content] -> Generator -> answer tokens

Content is optimized per example by gradient descent through the frozen
Generator. A batch of examples is optimized at once: all examples' sequences go
through the Generator as one batch (each example's loss depends only on its own
content, so the gradient of the sum is per-example), and the optax update is
vmapped over examples and contents (each has its own Adam state and its own
gradient clipping). The steps are a `lax.scan`.

Each example holds C = 2 content buffers; a static-shape `src_S` array says
which content each target sequence (S = 2: question, answer) reads:

    stage 1 (addressability)  src = [0, 1]: Q alone from content 0, A alone from content 1
    stage 2 (joint)           src = [0, 0]: Q and A from the same content 0

so both stages run through the same compiled function. Restarts re-initialise
the contents that have not converged with fresh keys (`jnp.where` on a mask)
inside the same compiled round function: nothing recompiles.

The Generator is any object with the pretrained-decoder protocol
(memjax.pretrained):
  model.embed(tokens_BxT) -> embeds_BxTxD            (the input of block 0)
  model(embeds_BxTxD=..., positions_BxT=None) -> (hidden_BxTxD, cache)
  model.logits(hidden_BxTxD) -> float32 logits
It is split once (`nnx.split`); its params are passed to the jitted functions
as arguments and never differentiated.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from memjax.core import losses

QUESTION, ANSWER = 0, 1          # target sequence index s
NUM_TARGETS = 2
NUM_CONTENTS = 2                 # content buffers per example (stage 1 uses both)
STAGE_SOURCES = {
    "stage1": (0, 1),            # Q alone from content 0, A alone from content 1
    "stage2": (0, 0),            # joint: Q and A from content 0
}


# --- contents ----------------------------------------------------------------------------------

def init_content(key: jax.Array, num_slots: int, dim: int, scale: float | jax.Array) -> jax.Array:
  """Random content: normal with the Generator's embedding RMS as its scale."""
  return scale * jax.random.normal(key, (num_slots, dim), jnp.float32)


def example_keys(key: jax.Array, index_B: jax.Array) -> jax.Array:
  """One key per example from its global index: independent of batching and sharding."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index_B)


# --- the Generator -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Generator:
  """A frozen decoder split into a static graph and a params pytree."""
  graphdef: Any
  bos_id: int | None
  eos_id: int | None

  @classmethod
  def split(cls, model: nnx.Module, *, bos_id: int | None, eos_id: int | None):
    graphdef, params = nnx.split(model)
    return cls(graphdef, bos_id, eos_id), params

  def merge(self, params) -> nnx.Module:
    return nnx.merge(self.graphdef, params)


def embedding_rms(model, vocab_size: int, *, sample: int = 4096, seed: int = 0) -> float:
  """RMS of the Generator's input embeddings over a sample of tokens (the content init scale)."""
  ids = np.random.default_rng(seed).choice(vocab_size, min(sample, vocab_size), replace=False)
  e = model.embed(jnp.asarray(ids, jnp.int32)[None])
  return float(jnp.sqrt(jnp.mean(jnp.square(e.astype(jnp.float32)))))


# --- losses ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LossOptions:
  """Loss-side options for the known failure modes.

  semantic_weight: paraphrases. loss = (1 - w) * CE + w * (1 - cos(soft, target)), where `soft` is
    the mean over target positions of the expected embedding under the predicted distribution
    (restricted to the top `semantic_topk` tokens) and `target` the mean target-token embedding.
  scheduled_sampling: teacher-forcing gap. Each teacher input token is replaced by the model's own
    greedy prediction (from a first, gradient-free pass) with probability rising linearly over the
    round's steps from 0 to this value.
  (Repetition past the answer is handled on the data side: an EOS appended to the targets, and a
  length limit when decoding.)
  """
  semantic_weight: float = 0.0
  semantic_topk: int = 64
  scheduled_sampling: float = 0.0


def place_targets(prompt_NxPxD: jax.Array, prompt_len_N: jax.Array, inputs_NxTxD: jax.Array):
  """[prompt (its first prompt_len rows) | inputs] in a buffer of P + T rows per sequence."""
  n, p, d = prompt_NxPxD.shape
  t = inputs_NxTxD.shape[1]
  buf = jnp.concatenate([prompt_NxPxD, jnp.zeros((n, t, d), prompt_NxPxD.dtype)], axis=1)

  def one(b, x, at):
    return jax.lax.dynamic_update_slice_in_dim(b, x.astype(b.dtype), at, axis=0)
  return jax.vmap(one)(buf, inputs_NxTxD, prompt_len_N)


def _gather_rows(x_NxLxD: jax.Array, start_N: jax.Array, length: int) -> jax.Array:
  return jax.vmap(lambda x, s: jax.lax.dynamic_slice_in_dim(x, s, length, axis=0))(x_NxLxD, start_N)


def _target_hidden(model, prompt_NxPxD, prompt_len_N, inputs_NxTxD, t: int):
  """Hidden states that predict the T targets: rows prompt_len - 1 ... prompt_len + T - 2."""
  buf = place_targets(prompt_NxPxD, prompt_len_N, inputs_NxTxD)
  hidden, _ = model(embeds_BxTxD=buf)
  return _gather_rows(hidden, prompt_len_N - 1, t)


def sequence_losses(model, prompt_NxPxD: jax.Array, prompt_len_N: jax.Array,
                    targets_NxT: jax.Array, mask_NxT: jax.Array, *,
                    options: LossOptions = LossOptions(), key: jax.Array | None = None,
                    progress: jax.Array | float = 1.0, uniform_NxT: jax.Array | None = None):
  """Per-sequence (loss, token-mean cross-entropy) of targets after a soft prompt.

  Logits are computed only at the T target positions. `prompt_len_N` may vary per sequence;
  rows of the prompt buffer past it are ignored (causal attention never sees the tail).
  `progress` in [0, 1] drives the scheduled-sampling ramp; its coin flips come from `uniform_NxT`
  (uniform [0, 1) draws for the T - 1 teacher inputs) when given, else from `key`.
  """
  t = targets_NxT.shape[1]
  mask = mask_NxT.astype(jnp.float32)
  teacher = targets_NxT[:, :-1]            # input at row prompt_len + i is target i
  if options.scheduled_sampling > 0:
    if key is None and uniform_NxT is None:
      raise ValueError("scheduled sampling needs a key or uniform_NxT")
    h0 = _target_hidden(model, prompt_NxPxD, prompt_len_N, model.embed(teacher), t)
    pred = jax.lax.stop_gradient(jnp.argmax(model.logits(h0[:, :-1]), axis=-1)).astype(teacher.dtype)
    p = options.scheduled_sampling * progress
    u = jax.random.uniform(key, teacher.shape) if uniform_NxT is None else uniform_NxT
    swap = (u < p) & (mask[:, :-1] > 0)
    teacher = jnp.where(swap, pred, teacher)
  h = _target_hidden(model, prompt_NxPxD, prompt_len_N, model.embed(teacher), t)
  logits = model.logits(h).astype(jnp.float32)                         # N x T x V
  ce_N = jax.vmap(losses.masked_mean)(losses.token_nll(logits, targets_NxT), mask)
  count = jnp.maximum(mask.sum(-1), 1.0)
  loss_N = ce_N
  if options.semantic_weight > 0:
    top_logits, top_ids = jax.lax.top_k(logits, options.semantic_topk)
    w = jax.nn.softmax(top_logits, axis=-1)                            # N x T x k
    e_top = model.embed(top_ids.reshape(top_ids.shape[0], -1)).reshape(*top_ids.shape, -1)
    soft = jnp.einsum("ntk,ntkd->ntd", w, e_top.astype(jnp.float32))
    tgt = jax.lax.stop_gradient(model.embed(targets_NxT).astype(jnp.float32))
    pool = lambda x: (x * mask[..., None]).sum(1) / count[:, None]
    cos = _cosine(pool(soft), pool(tgt))
    loss_N = (1 - options.semantic_weight) * ce_N + options.semantic_weight * (1 - cos)
  return loss_N, ce_N


def _cosine(a, b, eps=1e-8):
  return (a * b).sum(-1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + eps)


@flax.struct.dataclass
class PromptParts:
  """Embeddings shared by every example: optional BOS row and the two mode embeddings."""
  bos_1xD: jax.Array        # 0 x D when the tokenizer has no BOS
  modes_SxD: jax.Array


def stm_prompts(parts: PromptParts, contents_CxKxD: jax.Array, src_S: jax.Array) -> jax.Array:
  """[BOS] [mode_s | content_{src_s}] for each target sequence s: S x (bos + 1 + K) x D."""
  c = contents_CxKxD[src_S]                                            # S x K x D
  s, _, d = c.shape
  bos = jnp.broadcast_to(parts.bos_1xD, (s,) + parts.bos_1xD.shape)
  return jnp.concatenate([bos, parts.modes_SxD[:, None, :].astype(c.dtype), c], axis=1)


def batch_losses(model, parts: PromptParts, contents_BxCxKxD, src_S, targets_BxSxT, mask_BxSxT,
                 *, options: LossOptions = LossOptions(), keys_B=None, progress=1.0):
  """A batch of examples: (loss per content B x C, CE per target sequence B x S).

  The B x S sequences go through the Generator as ONE batch (a vmapped Generator call ran 2x
  slower on CPU); example b's losses depend only on its own contents and its own key
  `keys_B[b]`, so the gradient of the summed loss is each example's own gradient.
  """
  prompts = jax.vmap(lambda c: stm_prompts(parts, c, src_S))(contents_BxCxKxD)
  b, s, p, d = prompts.shape
  t = targets_BxSxT.shape[-1]
  uniform = None
  if options.scheduled_sampling > 0:
    if keys_B is None:
      raise ValueError("scheduled sampling needs keys_B")
    uniform = jax.vmap(lambda k: jax.random.uniform(k, (s, t)))(keys_B).reshape(b * s, t)[:, :-1]
  loss, ce = sequence_losses(model, prompts.reshape(b * s, p, d),
                             jnp.full((b * s,), p, jnp.int32), targets_BxSxT.reshape(b * s, t),
                             mask_BxSxT.reshape(b * s, t), options=options, progress=progress,
                             uniform_NxT=uniform)
  onehot_SxC = jax.nn.one_hot(src_S, contents_BxCxKxD.shape[1], dtype=loss.dtype)
  return loss.reshape(b, s) @ onehot_SxC, ce.reshape(b, s)


# --- the optimizer -----------------------------------------------------------------------------

def _where_tree(cond_C, new, old):
  def pick(n, o):
    c = cond_C.reshape(cond_C.shape + (1,) * (n.ndim - cond_C.ndim))
    return jnp.where(c, n, o)
  return jax.tree.map(pick, new, old)


@dataclasses.dataclass(frozen=True)
class ContentOptimizer:
  """Gradient descent on per-example contents through a frozen Generator.

  `tx` acts on ONE content buffer (K x D); it is vmapped over contents and examples so each has
  its own Adam moments and its own clipping. `steps` steps run as one lax.scan.
  """
  tx: optax.GradientTransformation
  steps: int
  unroll: bool = False            # debug switch: unroll the scan

  @classmethod
  def create(cls, *, steps: int, lr: float = 1.0, clip_norm: float | None = 1.0,
             schedule: str = "constant", warmup_steps: int = 0, end_lr_fraction: float = 0.1,
             b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
             unroll: bool = False) -> ContentOptimizer:
    if schedule == "constant":
      lr_fn = optax.constant_schedule(lr)
    elif schedule == "cosine":
      lr_fn = optax.cosine_decay_schedule(lr, max(steps, 1), alpha=end_lr_fraction)
    elif schedule == "warmup_cosine":
      lr_fn = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(steps, warmup_steps + 1),
                                                 end_value=lr * end_lr_fraction)
    else:
      raise ValueError(f"schedule: unknown value {schedule!r}; choose one of "
                       "['constant', 'cosine', 'warmup_cosine']")
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    parts.append(optax.adam(lr_fn, b1=b1, b2=b2, eps=eps))
    return cls(optax.chain(*parts), steps, unroll)

  def init(self, contents_BxCxKxD: jax.Array):
    return jax.vmap(jax.vmap(self.tx.init))(contents_BxCxKxD)

  def step(self, loss_fn: Callable, contents_BxCxKxD, opt_state, batch, active_BxC, key, i):
    """One update of every active content.

    loss_fn(contents_BxCxKxD, batch, keys_B, i) -> (loss B x C, aux): the whole batch in one
    Generator call, example b's loss depending only on its own contents (and keys_B[b]), so the
    gradient of the sum is each example's own gradient. The optax update is vmapped over
    examples and contents: each content has its own Adam moments and its own clipping.
    `batch["index"]` (global example index, if present) seeds the per-example keys. Inactive
    contents and their optimizer state are left unchanged.
    """
    index = batch["index"] if isinstance(batch, dict) and "index" in batch else \
        jnp.arange(contents_BxCxKxD.shape[0])
    keys = example_keys(jax.random.fold_in(key, i), index)

    def total(c):
      loss_BxC, aux = loss_fn(c, batch, keys, i)
      return loss_BxC.sum(), (loss_BxC, aux)
    (_, (loss_BxC, aux)), g = jax.value_and_grad(total, has_aux=True)(contents_BxCxKxD)
    updates, new_state = jax.vmap(jax.vmap(self.tx.update))(g, opt_state, contents_BxCxKxD)
    new = optax.apply_updates(contents_BxCxKxD, updates)
    return (_where_tree(active_BxC, new, contents_BxCxKxD),
            _where_tree(active_BxC, new_state, opt_state), loss_BxC, aux)

  def run(self, loss_fn: Callable, contents_BxCxKxD, opt_state, batch, active_BxC, key):
    """`steps` steps as one scan; returns (contents, opt_state, loss curve steps x B x C, aux)."""
    def body(carry, i):
      c, s = carry
      c, s, loss, aux = self.step(loss_fn, c, s, batch, active_BxC, key, i)
      return (c, s), (loss, aux)
    (c, s), (curve, aux) = jax.lax.scan(body, (contents_BxCxKxD, opt_state),
                                        jnp.arange(self.steps),
                                        unroll=self.steps if self.unroll else 1)
    return c, s, curve, aux


# --- convergence -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConvergenceRule:
  """A content has converged when its loss (the mean CE of the targets that read it) is

      < random_ratio x the random-content baseline   OR   < context_ratio x the full-context one,

  and each of its targets' CE is within part_ratio x that target's own baseline (the stage-1
  loss of the target alone: a joint content must not give up Q for A or A for Q). Part
  baselines below `part_floor` count as `part_floor` (a 2x ratio of ~0 is noise).
  """
  random_ratio: float = 0.3
  context_ratio: float = 2.0
  part_ratio: float = 2.0
  part_floor: float = 0.05

  def __call__(self, ce_S, random_S, context_S, part_S, src_S, num_contents: int = NUM_CONTENTS):
    """Per-content bool [C]; `part_S` = +inf where a target has no part baseline (stage 1).
    Contents no target reads are reported as converged (nothing to do)."""
    onehot = jax.nn.one_hot(src_S, num_contents, dtype=jnp.float32)          # S x C
    n = onehot.sum(0)
    mean = lambda x: (x @ onehot) / jnp.maximum(n, 1.0)
    loss, rnd, ctx = mean(ce_S), mean(random_S), mean(context_S)
    ok_total = (loss < self.random_ratio * rnd) | (loss < self.context_ratio * ctx)
    part_ok_S = ce_S <= self.part_ratio * jnp.maximum(part_S, self.part_floor)
    ok_parts = (onehot * (~part_ok_S)[:, None]).sum(0) == 0
    return jnp.where(n > 0, ok_total & ok_parts, True)


# --- rounds with restarts ----------------------------------------------------------------------

@flax.struct.dataclass
class StageState:
  """Best content found so far for each example's C contents, and whether it converged."""
  contents_BxCxKxD: jax.Array
  ce_BxS: jax.Array            # CE of the best attempt per target (inf before any)
  converged_BxC: jax.Array
  attempts_BxC: jax.Array      # rounds spent on each content

  @classmethod
  def init(cls, batch: int, num_slots: int, dim: int, num_contents: int = NUM_CONTENTS):
    return cls(jnp.zeros((batch, num_contents, num_slots, dim), jnp.float32),
               jnp.full((batch, NUM_TARGETS), jnp.inf, jnp.float32),
               jnp.zeros((batch, num_contents), bool),
               jnp.zeros((batch, num_contents), jnp.int32))


def used_contents(src_S: jax.Array, num_contents: int = NUM_CONTENTS) -> jax.Array:
  return jax.nn.one_hot(src_S, num_contents, dtype=jnp.int32).sum(0) > 0


def optimize_round(model, parts: PromptParts, optimizer: ContentOptimizer, rule: ConvergenceRule,
                   state: StageState, batch: dict, src_S: jax.Array, key: jax.Array,
                   round_index: jax.Array, init_scale, *, options: LossOptions = LossOptions()):
  """One (re)start: fresh contents for the unconverged, `optimizer.steps` steps, keep the best.

  batch: dict with leading axis B: "targets" B x S x T, "mask" B x S x T, "index" B (global example
  index: keys), "valid" B (padding rows are never optimized), "random_ce" B x S (random-content
  baseline), "context_ce" B x S (full-context baseline), "part_ce" B x S (stage-1 CE, inf in
  stage 1). Shapes never change between rounds or stages, so this compiles once.
  Returns (state, curve steps x B x C, ce curve steps x B x S, restarted B x C).
  """
  b, c, k, d = state.contents_BxCxKxD.shape
  used = used_contents(src_S, c)
  restart = ~state.converged_BxC & used[None, :] & batch["valid"][:, None]
  rkey = jax.random.fold_in(key, round_index)
  ekeys = example_keys(jax.random.fold_in(rkey, 0), batch["index"])
  fresh = jax.vmap(lambda kk: jax.vmap(lambda j: init_content(jax.random.fold_in(kk, j), k, d,
                                                              init_scale))(jnp.arange(c)))(ekeys)
  contents = jnp.where(restart[..., None, None], fresh, state.contents_BxCxKxD)
  opt_state = optimizer.init(contents)

  def loss_fn(cont, bt, keys, i):
    progress = (i + 1) / optimizer.steps
    return batch_losses(model, parts, cont, src_S, bt["targets"], bt["mask"], options=options,
                        keys_B=keys, progress=progress)

  contents, _, curve, ce_curve = optimizer.run(loss_fn, contents, opt_state, batch, restart,
                                               jax.random.fold_in(rkey, 1))
  _, ce_S = batch_losses(model, parts, contents, src_S, batch["targets"], batch["mask"])

  # keep the attempt where it beats the best so far (mean CE of the targets a content serves)
  onehot = jax.nn.one_hot(src_S, c, dtype=jnp.float32)
  per_content = lambda ce: (jnp.where(jnp.isfinite(ce), ce, 1e30) @ onehot) / \
      jnp.maximum(onehot.sum(0), 1.0)
  better = restart & (per_content(ce_S) < per_content(state.ce_BxS))
  contents = jnp.where(better[..., None, None], contents, state.contents_BxCxKxD)
  better_S = better[:, src_S]
  ce_best = jnp.where(better_S, ce_S, state.ce_BxS)
  converged = jax.vmap(lambda ce, r, x, p: rule(ce, r, x, p, src_S, c))(
      ce_best, batch["random_ce"], batch["context_ce"], batch["part_ce"])
  converged = jnp.where(used[None, :], converged, False)
  new = StageState(contents, ce_best, converged, state.attempts_BxC + restart.astype(jnp.int32))
  return new, curve, ce_curve, restart
