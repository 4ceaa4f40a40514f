"""HRRM models: Planner and Reasoner (HRM core + heads), Memory (Titans MAC).

  HRMLM         token embedding -> HRM core (H and L stacks) -> tied LM head on z_H,
                an optional Q-head (ACT halt / continue) and an optional ControllerHead.
  Planner       HRMLM + ControllerHead: per position, the control class of the next token
                (none, <PLAN>, <SUBGOAL>, <ACTION>, <CHECK>, <ENDPLAN>), loss weight lambda_ctrl.
  Reasoner      HRMLM trained on thought spans <SoT> ... <EoT> (scratchpad supervision);
                answers by greedy decoding or self-consistency over k samples.
  Memory        memjax.hrrm.mac.MACLM.

`model_config(kind, size)` gives the 50M ("50m") and CPU ("tiny") sizes;
`build(model_cfg, vocab_size)` the module; `param_count` counts with
jax.eval_shape (nothing allocated).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from memjax.core.precision import follow_inputs
from memjax.core import config as cfg
from memjax.layers import dense
from memjax.hrrm.tasks import CONTROL_TOKENS
from memjax.recurrence.hrm import HRMCarry
from memjax.recurrence.hrm import HRMCore
from memjax.hrrm.mac import MACLM

KINDS = ("planner", "reasoner", "memory", "hrm")


class HRMLM(nnx.Module):
  """Embedding, HRM core, tied head on z_H; optional learned absolute positions."""

  def __init__(self, *, vocab_size: int, d_model: int, num_heads: int, d_ff: int,
               h_layers: int, l_layers: int, mlp: str = "gelu", rope_theta: float = 10_000.0,
               max_seq_len: int = 0, learned_pos: bool = False, act: bool = False,
               controller_classes: int = 0, rngs: nnx.Rngs):
    if d_model % num_heads:
      raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
    self.d_model = d_model
    self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs, promote_dtype=follow_inputs)
    self.pos = (nnx.Param(nnx.initializers.normal(d_model ** -0.5)(rngs.params(),
                                                                   (max_seq_len, d_model)))
                if learned_pos else None)
    self.core = HRMCore(d_model, num_heads, d_ff, h_layers=h_layers, l_layers=l_layers, mlp=mlp,
                        rope_theta=rope_theta, rngs=rngs)
    self.q_head = dense.Linear(d_model, 2, bias_init=nnx.initializers.constant(-5.0),
                               rngs=rngs) if act else None
    self.ctrl_head = dense.Linear(d_model, controller_classes, rngs=rngs) \
        if controller_classes else None

  def input_embedding(self, tokens_BxT):
    x = self.embed(tokens_BxT) * math.sqrt(self.d_model)
    if self.pos is not None:
      x = x + self.pos[...][: tokens_BxT.shape[1]] * math.sqrt(self.d_model)
    return x

  def init_carry(self, tokens_BxT) -> HRMCarry:
    return self.core.init_carry(*tokens_BxT.shape)

  def segment(self, x_BxTxD, carry: HRMCarry, *, H: int, L: int, causal: bool,
              one_step_grad: bool = True, unroll: bool = False):
    """One forward segment: (carry, outputs dict with logits[, q_logits][, ctrl_logits])."""
    carry = self.core(x_BxTxD, carry, H=H, L=L, causal=causal, one_step_grad=one_step_grad,
                      unroll=unroll)
    z = carry.z_H_BxTxD
    out = {"logits": self.embed.attend(z)}
    if self.q_head is not None:
      out["q_logits"] = self.q_head(z.mean(1))          # B x 2: (halt, continue)
    if self.ctrl_head is not None:
      out["ctrl_logits"] = self.ctrl_head(z)
    return carry, out


# --------------------------------------------------------------------------- configs

def model_config(kind: str, size: str = "tiny") -> ml_collections.ConfigDict:
  """HRRM model sizes. "50m": the issue's configuration; "tiny": minutes on a CPU."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  if size == "50m":
    c = dict(vocab_size=32000, d_model=512, num_layers=12, num_heads=8, d_ff=2048,
             max_seq_len=2048, tie_embeddings=True, rope_theta=10_000.0, max_H=3, inner_T=2,
             mlp="gelu", lambda_ctrl=0.2, self_consistency_k=5)
  elif size == "tiny":
    c = dict(vocab_size=0, d_model=64, num_layers=2, num_heads=4, d_ff=256, max_seq_len=64,
             tie_embeddings=True, rope_theta=10_000.0, max_H=2, inner_T=2, mlp="gelu",
             lambda_ctrl=0.2, self_consistency_k=5)
  else:
    raise ValueError(f"size must be '50m' or 'tiny', got {size!r}")
  c.update(name={"planner": "hrrm_planner", "reasoner": "hrrm_reasoner",
                 "memory": "hrrm_memory", "hrm": "hrm"}[kind],
           segments=1, one_step_grad=True, act=False, learned_pos=False, causal=True,
           unroll=False)
  if kind == "memory":
    big = size == "50m"
    c.update(mem_dim=256 if big else 32, mem_tokens=64 if big else 4,
             mem_slots=128 if big else 64, mem_depth=2, chunk=256 if big else 16,
             alpha=1.0, beta=0.9, eta=0.01, eta_decay=0.001, momentum=True, forget=True,
             conv=4)
    for k in ("max_H", "inner_T", "lambda_ctrl", "self_consistency_k", "segments",
              "one_step_grad", "act", "learned_pos", "causal", "unroll"):
      del c[k]
  return ml_collections.ConfigDict(c)


def validate_model(m, vocab_size: int | None = None) -> None:
  """One-line ConfigError naming the field for every bad size."""
  root = ml_collections.ConfigDict({"model": m})
  cfg.positive(root, "model.d_model", "model.num_layers", "model.num_heads", "model.d_ff")
  cfg.require(m.d_model % m.num_heads == 0, "model.num_heads",
              f"d_model={m.d_model} is not divisible by num_heads={m.num_heads}")
  cfg.require((m.d_model // m.num_heads) % 2 == 0, "model.num_heads",
              f"head dim {m.d_model // m.num_heads} must be even for RoPE")
  cfg.one_of(root, "model.mlp", ("gelu", "swiglu"))
  cfg.require(bool(m.get("tie_embeddings", True)), "model.tie_embeddings",
              "only tied embeddings are implemented")
  cfg.require(m.vocab_size >= 0, "model.vocab_size",
              f"must be positive (or 0: the task's), got {m.vocab_size!r}")
  if vocab_size is not None and m.vocab_size:
    cfg.require(m.vocab_size >= vocab_size, "model.vocab_size",
                f"{m.vocab_size} is smaller than the task's vocabulary {vocab_size}")
  if "mem_dim" in m:
    cfg.positive(root, "model.mem_dim", "model.mem_slots", "model.mem_depth", "model.chunk")
    cfg.non_negative(root, "model.mem_tokens", "model.eta", "model.alpha", "model.eta_decay",
                     "model.beta")
    cfg.require(m.beta < 1, "model.beta", f"momentum must be < 1, got {m.beta}")
    cfg.require(m.eta_decay < 1, "model.eta_decay", f"must be < 1, got {m.eta_decay}")
  else:
    cfg.require(m.num_layers >= 2 and m.num_layers % 2 == 0, "model.num_layers",
                f"HRM splits layers evenly between H and L: need an even number >= 2, got "
                f"{m.num_layers}")
    cfg.positive(root, "model.max_H", "model.inner_T", "model.segments")
    if m.get("learned_pos", False):
      cfg.positive(root, "model.max_seq_len")


def build(m, vocab_size: int | None = None, *, rngs: nnx.Rngs | None = None):
  """The nnx module for a model config (vocab from the config, else the task's)."""
  validate_model(m, vocab_size)
  rngs = rngs if rngs is not None else nnx.Rngs(0)
  v = m.vocab_size or vocab_size
  if "mem_dim" in m:
    return MACLM(vocab_size=v, d_model=m.d_model, num_layers=m.num_layers,
                 num_heads=m.num_heads, d_ff=m.d_ff, chunk=m.chunk, mem_dim=m.mem_dim,
                 mem_slots=m.mem_slots, mem_tokens=m.mem_tokens, mem_depth=m.mem_depth,
                 alpha=m.alpha, beta=m.beta, eta=m.eta, eta_decay=m.eta_decay,
                 momentum=m.momentum, forget=m.forget, conv=m.get("conv", 4), mlp=m.mlp,
                 rope_theta=m.rope_theta,
                 rngs=rngs)
  return HRMLM(vocab_size=v, d_model=m.d_model, num_heads=m.num_heads, d_ff=m.d_ff,
               h_layers=m.num_layers // 2, l_layers=m.num_layers // 2, mlp=m.mlp,
               rope_theta=m.rope_theta, max_seq_len=m.max_seq_len, learned_pos=m.learned_pos,
               act=m.act, controller_classes=(len(CONTROL_TOKENS) + 1
                                              if m.name == "hrrm_planner" else 0),
               rngs=rngs)


def param_count(m, vocab_size: int | None = None) -> int:
  """Parameters of the model, from shapes only (jax.eval_shape: nothing allocated)."""
  model = nnx.eval_shape(lambda: build(m, vocab_size))
  params = nnx.state(model, nnx.Param)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
