"""Remedies against a decoder that bypasses its memory, each one config switch.

config.model.remedies: a comma-separated string or a list of names from REMEDIES;
their knobs live in config.model.remedy (defaults below).

  bottleneck   decoder self-attention window shrunk to `bottleneck_ctx` tokens
  ablate       per example, with probability `ablate_p`, keep only the last `ablate_keep` tokens
  attn_sup     loss pulling the decoder's memory attention (answer position, last layer)
               toward the M2 slots that read the answer's source fact
  contrastive  softplus(log p(answer | other example's memory) - log p(answer | own memory))
  grad_route   on a fraction `route_p` of steps, no gradient through decoder self-attention
  primary      memory-as-primary: the decoder sees memory plus its last `primary_keep` tokens
"""
from __future__ import annotations

import dataclasses

import numpy as np

from memjax.core.config import ConfigError

REMEDIES = ("bottleneck", "ablate", "attn_sup", "contrastive", "grad_route", "primary")


@dataclasses.dataclass(frozen=True)
class Remedies:
  active: frozenset = frozenset()
  bottleneck_ctx: int = 8
  ablate_p: float = 0.5
  ablate_keep: int = 16
  attn_sup_weight: float = 1.0
  contrastive_weight: float = 1.0
  route_p: float = 0.5
  primary_keep: int = 4

  def on(self, name: str) -> bool:
    return name in self.active


def parse(names, knobs=None) -> Remedies:
  """Remedies from config values; an unknown name raises ConfigError."""
  if names is None:
    names = ()
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  names = [str(n) for n in names]
  for n in names:
    if n not in REMEDIES:
      raise ConfigError(f"model.remedies: unknown remedy {n!r}; choose from {list(REMEDIES)}")
  knobs = dict(knobs or {})
  fields = {f.name for f in dataclasses.fields(Remedies)} - {"active"}
  for k in knobs:
    if k not in fields:
      raise ConfigError(f"model.remedy.{k}: unknown knob; choose from {sorted(fields)}")
  r = Remedies(active=frozenset(names), **knobs)
  for k in ("bottleneck_ctx", "ablate_keep", "primary_keep"):
    if getattr(r, k) < 1:
      raise ConfigError(f"model.remedy.{k}: must be >= 1, got {getattr(r, k)}")
  for k in ("ablate_p", "route_p"):
    if not 0.0 <= getattr(r, k) <= 1.0:
      raise ConfigError(f"model.remedy.{k}: must lie in [0, 1], got {getattr(r, k)}")
  return r


def knobs(r: Remedies, ctx: int) -> dict:
  """The remedies as numbers (switched off = neutral value), so one compiled step serves all.

  A batch may carry its own `knobs` dict (the ablation runner does); else these apply.
  """
  window = ctx
  if r.on("bottleneck"):
    window = min(window, r.bottleneck_ctx)
  if r.on("primary"):
    window = min(window, r.primary_keep)
  return dict(
      window=np.int32(window),
      ablate_p=np.float32(r.ablate_p if r.on("ablate") else 0.0),
      ablate_keep=np.int32(r.ablate_keep),
      attn_sup=np.float32(r.attn_sup_weight if r.on("attn_sup") else 0.0),
      contrastive=np.float32(r.contrastive_weight if r.on("contrastive") else 0.0),
      route_p=np.float32(r.route_p if r.on("grad_route") else 0.0),
  )
