"""Prints a phase-1a run (convergence rate, loss ratios, decoded samples) and saves plots.

  python experiments/analyze_phase1a.py --workdir=/tmp/p1a
  python experiments/analyze_phase1a.py --workdir=/tmp/k4,/tmp/k16,/tmp/k64   # convergence by K
Plots go to the first workdir (or --out): loss_curves.png, convergence_by_k.png.
"""
import os
import sys

from absl import flags

from memjax.dcm import report
from memjax.core import cli

_WORKDIR = flags.DEFINE_list("workdir", None, "Workdir(s) of experiments/phase1a.py runs.")
_OUT = flags.DEFINE_string("out", None, "Where the PNGs go (default: the first workdir).")
_SAMPLES = flags.DEFINE_integer("samples", 5, "Decoded samples to print per run.")


def main(argv):
  del argv
  try:
    dirs = report.find_runs(_WORKDIR.value)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  runs = [report.load(d) for d in dirs]
  out = _OUT.value or dirs[0]
  os.makedirs(out, exist_ok=True)
  for run in runs:
    print(report.summary(run, _SAMPLES.value))
    print()
  print("plots:", report.plot_loss_curves(runs[0], os.path.join(out, "loss_curves.png")),
        report.plot_convergence_by_k(runs, os.path.join(out, "convergence_by_k.png")))
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
