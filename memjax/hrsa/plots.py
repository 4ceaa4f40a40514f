"""Plots of HRSA diagnostics per step: gradient-flow split, memory share, guardrails."""
from __future__ import annotations

import json

PANELS = (
    ("gradient norm", ("grad_norm_xattn", "grad_norm_self_attn")),
    ("memory share at the answer", ("memory_share",)),
    ("guardrails", ("sim_gap", "delta_zero")),
    ("exact match", ("retrieval_em", "adversarial_em")),
)


def read_metrics(path: str) -> list[dict]:
  """Rows of a metrics.jsonl written by the training loop."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_diagnostics(histories: dict[str, list[dict]] | list[dict], path: str | None = None):
  """One figure, a panel per diagnostic; `histories` maps a run name to its metric rows."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if isinstance(histories, list):
    histories = {"run": histories}
  fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.2))
  for ax, (title, keys) in zip(axes, PANELS):
    for name, rows in histories.items():
      for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        if pts:
          xs, ys = zip(*pts)
          ax.plot(xs, ys, label=f"{name}: {k}" if len(histories) > 1 else k)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend(fontsize=6)
  fig.tight_layout()
  if path:
    fig.savefig(path, dpi=100)
  return fig
