"""Collects the HRRM results.json files into one markdown table (and JSON).

  python experiments/report_hrrm.py --workdirs=workdirs/hrm_reasoning,workdirs/titans_recall,\
workdirs/hrrm_planner,workdirs/hrrm_reasoner --out=artifacts/hrrm/report.md
"""
import json
import os
import sys

from absl import flags

from memjax.core import cli

_WORKDIRS = flags.DEFINE_list("workdirs", [], "Training workdirs with results.json.")
_OUT = flags.DEFINE_string("out", None, "Markdown file to write (also prints it).")

SHOWN = ("accuracy", "accuracy_memory_zeroed", "accuracy_memory_shuffled", "accuracy_no_memory",
         "chance", "delta_zero", "memory_cosine", "accuracy_generate",
         "accuracy_self_consistency_k5", "perplexity", "train_steps", "train_seconds_this_run")


def _fmt(v):
  if v is None:
    return "n/a"
  if isinstance(v, float):
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
  return str(v)


def report(workdirs) -> str:
  lines = ["| run | model | " + " | ".join(SHOWN) + " |",
           "|---|---|" + "---|" * len(SHOWN)]
  by_h = []
  for wd in workdirs:
    path = os.path.join(wd, "results.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--workdirs: {path} does not exist (train or eval first)")
    with open(path) as f:
      r = json.load(f)
    name = "?"
    cfg_path = os.path.join(wd, "config.json")
    if os.path.isfile(cfg_path):
      with open(cfg_path) as f:
        name = json.load(f).get("model", {}).get("name", "?")
    lines.append(f"| {os.path.basename(os.path.normpath(wd))} | {name} | "
                 + " | ".join(_fmt(r.get(k)) for k in SHOWN) + " |")
    if "accuracy_by_h_cycles" in r:
      by_h.append((os.path.basename(os.path.normpath(wd)), r["accuracy_by_h_cycles"]))
  for run, table in by_h:
    hs = sorted(table, key=int)
    lines += ["", f"accuracy by H cycles at test time ({run}):", "",
              "| H | " + " | ".join(hs) + " |", "|---|" + "---|" * len(hs),
              "| accuracy | " + " | ".join(_fmt(table[h]) for h in hs) + " |"]
  return "\n".join(lines)


def main(argv):
  del argv
  try:
    if not _WORKDIRS.value:
      raise ValueError("--workdirs: give at least one workdir")
    text = report(_WORKDIRS.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(text)
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  cli.run(main)
