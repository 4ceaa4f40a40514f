"""Reading a phase-1a workdir: summary text, decoded samples, and plots (PNG, Agg backend)."""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from memjax.core import yardstick

RATIO_KEYS = ("stage1_question_ratio_random", "stage1_answer_ratio_random",
              "stage1_question_ratio_context", "stage1_answer_ratio_context",
              "stage2_ratio_random", "stage2_ratio_context", "stage2_question_ratio_stage1",
              "stage2_answer_ratio_stage1")
YARDSTICK = yardstick.KEYS


def load(workdir: str) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"workdir: no results.json in {workdir!r} (run experiments/phase1a.py)")
  with open(path) as f:
    results = json.load(f)
  examples = []
  for p in sorted(glob.glob(os.path.join(workdir, "examples", "*.json"))):
    with open(p) as f:
      examples.append(json.load(f))
  curves_path = os.path.join(workdir, "curves.npz")
  curves = dict(np.load(curves_path)) if os.path.exists(curves_path) else {}
  return {"results": results, "examples": examples, "curves": curves, "workdir": workdir}


def summary(run: dict, samples: int = 5) -> str:
  r = run["results"]
  fmt = lambda v: "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
  lines = [f"{run['workdir']}: model {r.get('model')}, {r.get('num_examples')} examples, "
           f"K={r.get('num_slots')}, {r.get('steps')} steps x {1 + r.get('num_restarts', 0)} rounds",
           f"convergence_rate  {fmt(r.get('convergence_rate'))}"]
  for k in ("stage1_question_convergence_rate", "stage1_answer_convergence_rate"):
    if k in r:
      lines.append(f"{k}  {fmt(r[k])}")
  lines.append("loss ratios (mean over examples):")
  lines += [f"  {k}  {fmt(r.get(k))}" for k in RATIO_KEYS if k in r]
  lines.append(f"  baselines: random {fmt(r.get('random_loss'))}, full context "
               f"{fmt(r.get('context_loss'))}, stage 2 {fmt(r.get('stage2_loss'))} (nats/token)")
  lines.append("memory-use yardstick:")
  lines += [f"  {k}  {fmt(r.get(k))}" for k in YARDSTICK]
  for k in ("question_exact_match", "answer_exact_match", "converged_both_exact_match"):
    lines.append(f"  {k}  {fmt(r.get(k))}")
  lines.append("decoded samples (stage 3, from the joint content):")
  for ex in run["examples"][:samples]:
    s3 = ex["stage3"]
    lines.append(f"  [{ex['id']}] converged={ex['stage2']['converged']}")
    lines.append(f"    Q  target {ex['question']!r}")
    lines.append(f"       got    {s3['question']!r}")
    lines.append(f"    A  target {ex['answer']!r}")
    lines.append(f"       got    {s3['answer']!r}")
  return "\n".join(lines)


def _flat(curve_RxSxNxC: np.ndarray, n: int, c: int) -> np.ndarray:
  """Rounds concatenated along steps for example n, column c (NaN rounds dropped)."""
  x = curve_RxSxNxC[:, :, n, c].reshape(-1)
  return x[np.isfinite(x)] if np.isfinite(x).any() else x


def plot_loss_curves(run: dict, path: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  curves = run["curves"]
  panels = [(k, t) for k, t in (("stage1_ce", "stage 1: Q alone / A alone"),
                                ("stage2_ce", "stage 2: joint Q-A")) if k in curves]
  fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 4),
                           squeeze=False)
  for ax, (k, title) in zip(axes[0], panels):
    ce = curves[k]                                        # rounds x steps x N x S
    for n in range(ce.shape[2]):
      for s, style in ((0, "-"), (1, "--")):
        y = _flat(ce, n, s)
        ax.plot(np.arange(len(y)), y, style, color=f"C{n % 10}", lw=1,
                label=f"ex {n} {'QA'[s]}" if n < 5 else None)
    steps = ce.shape[1]
    for r in range(1, ce.shape[0]):
      ax.axvline(r * steps, color="grey", lw=0.5, ls=":")
    ax.set_title(title)
    ax.set_xlabel("step (restarts at dotted lines)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_convergence_by_k(runs: list[dict], path: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  pts = sorted((r["results"]["num_slots"], r["results"]["convergence_rate"],
                r["results"].get("converged_both_exact_match")) for r in runs)
  fig, ax = plt.subplots(figsize=(5, 4))
  ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="convergence rate")
  if all(p[2] is not None for p in pts):
    ax.plot([p[0] for p in pts], [p[2] for p in pts], "s--", label="converged: Q and A exact")
    ax.legend(fontsize=7)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("K (content slots)")
  ax.set_ylabel("rate (stage 2)")
  ax.set_ylim(-0.05, 1.05)
  ax.set_title(f"convergence by K ({len(pts)} run{'s' * (len(pts) != 1)})")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def find_runs(workdirs: list[str]) -> list[str]:
  """The workdirs given, plus any subdirectory holding a results.json (a K sweep)."""
  out = []
  for w in workdirs:
    if os.path.exists(os.path.join(w, "results.json")):
      out.append(w)
    out += sorted(os.path.dirname(p) for p in glob.glob(os.path.join(w, "*", "results.json")))
  if not out:
    raise FileNotFoundError(f"workdir: no results.json under {', '.join(workdirs)}")
  return out
