"""Latentem budget sweep: discard / summary / latent / oracle, frozen and LoRA reader.

  python experiments/eval_budget_sweep.py --workdir=/tmp/latentem
Reads the trained workdir of configs/latentem_kv.py, prints the table and writes
sweep.json and sweep.png (accuracy vs budget per method) into --out (default: the workdir).
"""
import sys

from absl import app, flags, logging

from memjax.core import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir (configs/latentem_kv.py).")
_FROZEN = flags.DEFINE_string("frozen_workdir", None,
                              "Optional run of the frozen-reader branch alone (config arg "
                              "`frozen`), when the main run did not train it.")
_OUT = flags.DEFINE_string("out", None, "Where sweep.json/png go (default: --workdir).")
_BUDGETS = flags.DEFINE_list("budgets", ["64", "96", "128"], "Budgets (kept tokens).")
_EPISODES = flags.DEFINE_integer("episodes", 256, "Held-out episodes per budget.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Episodes per evaluation batch.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from memjax.latentem import sweep  # pylint: disable=g-import-not-at-top
  result = cli.run_guarded(sweep.sweep, _WORKDIR.value, [int(b) for b in _BUDGETS.value],
                           _EPISODES.value, _BATCH.value, _FROZEN.value)
  print(sweep.format_table(result))
  path, png = sweep.write(result, _OUT.value or _WORKDIR.value)
  print(f"sweep: {path} {png}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  sys.exit(app.run(main))
