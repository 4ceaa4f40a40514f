"""The budget sweep: every baseline against the learned latents at several budgets.

Methods, each with the frozen reader and with the LoRA reader (when the run trained one):
  discard   the removed part is gone: [BOS | kept]                     (= accuracy_no_memory)
  summary   the asked statement kept as text within the budget          (an ideal text summary)
  latent    [BOS | soft prompt | K latents | kept]                       (the trained compressor)
  oracle    the full prompt as text                                      (= accuracy_oracle)
Held-out episodes (eval bindings, disjoint from training), the same ones for every method.
"""
from __future__ import annotations

import copy
import json
import os

import jax
import numpy as np

from memjax.core import checkpointing
from memjax.core import loop
from memjax.latentem.system import Latentem
from memjax.latentem.task import LatentemKV

METHODS = ("discard", "summary", "latent", "oracle")


def restore(workdir: str):
  """(config, Latentem, params) of a trained workdir's latest checkpoint."""
  config = checkpointing.load_config(workdir)
  loop.validate(config)
  task = LatentemKV(config.task)
  lt = Latentem(config, task)
  tx = loop.make_optimizer(config.train)
  abstract = jax.eval_shape(lambda: loop.init_state(config, lt.system(), tx))
  mngr = checkpointing.manager(workdir, read_only=True)
  try:
    state, _ = checkpointing.restore(mngr, abstract)
  finally:
    mngr.close()
  return config, lt, state.params


def _method_fn(lt: Latentem):
  def fn(params, batch, frozen):
    out = {}
    for branch in ("frozen", "lora"):
      if branch == "lora" and "lora" not in lt.readers:
        continue
      out[f"discard_{branch}"] = lt.answer(params, batch, None, frozen=frozen, branch=branch)
      out[f"summary_{branch}"] = lt.summary(params, batch, frozen=frozen, branch=branch)
      out[f"oracle_{branch}"] = lt.oracle(params, batch, frozen=frozen, branch=branch)
      if branch in lt.readers:
        mem = lt.ingest(params, batch, frozen=frozen, branch=branch)
        out[f"latent_{branch}"] = lt.answer(params, batch, mem, frozen=frozen, branch=branch)
    return {k: v["correct"] for k, v in out.items()}
  return jax.jit(fn)


def sweep(workdir: str, budgets=(64, 96, 128), episodes: int = 256, batch_size: int = 32,
          frozen_workdir: str | None = None, log=print) -> dict:
  """{"budgets": [...], "accuracy": {method: [acc per budget]}, "episodes": n}; the latent of
  the frozen reader comes from `frozen_workdir` when the main run did not train it."""
  runs = [restore(workdir)]
  if frozen_workdir:
    runs.append(restore(frozen_workdir))
  acc: dict[str, list] = {}
  n_batches = max(1, episodes // batch_size)
  for budget in budgets:
    row = {}
    for i, (config, lt, params) in enumerate(runs):
      c = copy.deepcopy(config.task)
      c.budget = int(budget)
      task = LatentemKV(c)
      lt_b = Latentem(config, task)   # the same weights; shapes follow the budget
      fn = _method_fn(lt_b)
      sums, count = {}, 0
      it = iter(task.batches("eval", batch_size, config.train.seed))
      for _ in range(n_batches):
        batch = next(it)
        for k, v in fn(params, batch, lt_b.frozen).items():
          sums[k] = sums.get(k, 0.0) + float(v)
        count += batch_size
      for k, v in sums.items():
        if i == 0 or k == "latent_frozen" and k not in row:
          row[k] = v / count
    for k, v in row.items():
      acc.setdefault(k, [None] * len(budgets))[list(budgets).index(budget)] = v
    log(f"budget {budget}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(row.items())))
  return {"budgets": list(budgets), "accuracy": acc, "episodes": n_batches * batch_size,
          "chance": 0.1, "workdir": workdir, "frozen_workdir": frozen_workdir}


def format_table(result: dict) -> str:
  cols = [f"{m}_{r}" for m in METHODS for r in ("frozen", "lora")
          if f"{m}_{r}" in result["accuracy"]]
  width = max(len(c) for c in cols)
  lines = ["budget  " + "  ".join(c.rjust(width) for c in cols)]
  for i, b in enumerate(result["budgets"]):
    vals = [result["accuracy"][c][i] for c in cols]
    lines.append(f"{b:>6}  " + "  ".join(("n/a" if v is None else f"{v:.3f}").rjust(width)
                                         for v in vals))
  lines.append(f"({result['episodes']} held-out episodes per budget, chance {result['chance']})")
  return "\n".join(lines)


def write(result: dict, out_dir: str) -> tuple[str, str]:
  """sweep.json and sweep.png (accuracy vs budget per method) into out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "sweep.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, ys in sorted(result["accuracy"].items()):
    xs = [b for b, y in zip(result["budgets"], ys) if y is not None]
    ax.plot(xs, [y for y in ys if y is not None], marker="o",
            linestyle="--" if name.endswith("frozen") else "-", label=name)
  ax.axhline(result["chance"], color="gray", linewidth=0.8, label="chance")
  ax.set_xlabel("budget (kept tokens)")
  ax.set_ylabel("accuracy (held-out)")
  ax.set_ylim(-0.02, 1.02)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  png = os.path.join(out_dir, "sweep.png")
  fig.savefig(png, dpi=120)
  plt.close(fig)
  return path, png
