"""The HRSA remedies ablation: one compiled train step, every remedy as data.

Each variant (no remedy, each remedy alone, memory-as-primary) trains from the same
initial parameters on the same batches for the same number of steps, then gets the
memory-use yardstick plus adversarial EM. The remedies travel inside the batch as
`knobs` (memjax.hrsa.remedies.knobs), so the step compiles once for all variants.
"""
from __future__ import annotations

import itertools
import time

import jax
import numpy as np

from memjax.core import registry as systems
from memjax.core import tasks
from memjax.core import yardstick
from memjax.hrsa import remedies as remedies_lib
from memjax.core.loop import init_state
from memjax.core.loop import warm_start
from memjax.core.optim import make_optimizer
from memjax.core.step import make_multi_step
from memjax.core.step import make_train_step

VARIANTS = ("none",) + remedies_lib.REMEDIES
COLUMNS = ("variant", "accuracy", "accuracy_memory_zeroed", "accuracy_memory_shuffled",
           "accuracy_no_memory", "accuracy_adversarial", "delta_zero", "memory_cosine", "seconds")
# The bypass regime (task.inside_fraction > 0, issue 14): EM beyond / inside the decoder's
# local context, the LM loss (train, mean of the last 10 logged calls, beside the no-memory
# reference decoder's when the model has one) and the steps to train EM 0.5 / 0.9.
BYPASS_COLUMNS = ("variant", "accuracy_beyond", "accuracy_beyond_memory_zeroed",
                  "accuracy_beyond_memory_shuffled", "accuracy_inside", "accuracy_adversarial",
                  "delta_zero_beyond", "loss_lm", "loss_lm_reference", "steps_to_0.5",
                  "steps_to_0.9", "seconds")


def _with_knobs(batch: dict, knobs: dict, lead: int | None = None) -> dict:
  shape = () if lead is None else (lead,)
  return dict(batch, knobs={k: np.full(shape, v, np.asarray(v).dtype) for k, v in knobs.items()})


def start_state(config, system, tx):
  """Every variant's first state: the fresh init, or with `train.init_from` the parameters of
  that workdir's newest checkpoint (a curriculum's next stage, ablated from a common start)."""
  state = init_state(config, system, tx)
  t = config.train
  if t.get("init_from"):
    state = warm_start(state, t.init_from, t.get("init_skip", ()))
  return state


def run_ablation(config, variants=VARIANTS, *, steps: int | None = None, log=print):
  """Returns (rows, histories): one yardstick row and one metrics history per variant."""
  for v in variants:
    if v != "none":
      remedies_lib.parse([v])
  t = config.train
  steps = steps or t.steps
  task = tasks.make_task(config.task)
  system = systems.make_system(config, task)
  tx = make_optimizer(config.train)
  step_fn = jax.jit(make_multi_step(make_train_step(system.loss, tx)), donate_argnums=0)
  answer_fn = jax.jit(lambda p, b: system.answer(p, b, system.ingest(p, b)))
  k = t.steps_per_call
  bs = t.get("eval_batch_size", t.batch_size)
  eval_raw = list(itertools.islice(iter(task.batches("eval", bs, t.seed)), t.eval_batches))
  adv_raw = list(itertools.islice(iter(task.batches("adversarial", bs, t.seed)), t.eval_batches))
  bypass = getattr(task, "inside_fraction", 0.0) > 0
  where_raw = {w: list(itertools.islice(iter(task.batches(f"eval_{w}", bs, t.seed)),
                                        t.eval_batches))
               for w in (("beyond", "inside") if bypass else ())}
  knobs_cfg = config.model.get("remedy", None)
  rows, histories = [], {}
  for v in variants:
    rem = remedies_lib.parse([] if v == "none" else [v], knobs_cfg)
    kn = remedies_lib.knobs(rem, config.model.ctx)
    state = start_state(config, system, tx)
    it = iter(task.batches("train", t.batch_size, t.seed))
    hist = []
    t0 = time.time()
    for call in range(steps // k):
      batches = jax.tree.map(lambda *b: np.stack(b), *itertools.islice(it, k))
      state, metrics = step_fn(state, _with_knobs(batches, kn, k))
      hist.append({"step": (call + 1) * k, **{m: float(x) for m, x in
                                                jax.device_get(metrics).items() if np.ndim(x) == 0}})
    seconds = time.time() - t0
    res = yardstick.evaluate(system, state.params, [_with_knobs(b, kn) for b in eval_raw],
                             task.chance)
    correct = count = 0.0
    for b in adv_raw:
      out = answer_fn(state.params, _with_knobs(b, kn))
      correct, count = correct + float(out["correct"]), count + float(out["count"])
    res["accuracy_adversarial"] = correct / max(count, 1.0)
    row = {"variant": v, **{c: res.get(c) for c in COLUMNS[1:-1]}, "seconds": seconds}
    for w, raw in where_raw.items():
      r = yardstick.evaluate(system, state.params, [_with_knobs(b, kn) for b in raw], task.chance)
      for key in ("accuracy", "accuracy_memory_zeroed", "accuracy_memory_shuffled"):
        row[key.replace("accuracy", f"accuracy_{w}")] = r.get(key)
      row[f"delta_zero_{w}"] = r.get("delta_zero")
    if bypass:
      for key in ("loss_lm", "loss_lm_reference"):
        vals = [h[key] for h in hist[-10:] if key in h]
        row[key] = float(np.mean(vals)) if vals else None
      for level in (0.5, 0.9):
        row[f"steps_to_{level}"] = steps_to(hist, level=level)
    rows.append(row)
    histories[v] = hist
    if log:
      log(format_row(row))
  return rows, histories


def steps_to(history: list[dict], key: str = "retrieval_em", level: float = 0.9,
             window: int = 10) -> int | None:
  """First step at which the mean of `key` over the last `window` logged rows reaches
  `level` (one row per compiled call; a single row's batch EM is too noisy), else None."""
  vals = [r[key] for r in history if key in r]
  steps = [r["step"] for r in history if key in r]
  for i in range(window - 1, len(vals)):
    if np.mean(vals[i - window + 1:i + 1]) >= level:
      return steps[i]
  return None


def _columns(row: dict):
  return BYPASS_COLUMNS if "accuracy_beyond" in row else COLUMNS


def format_row(row: dict) -> str:
  f = lambda x: "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
  return "| " + " | ".join(f(row.get(c)) for c in _columns(row)) + " |"


def format_table(rows) -> str:
  cols = _columns(rows[0]) if rows else COLUMNS
  head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)
  return head + "\n" + "\n".join(format_row(r) for r in rows)
