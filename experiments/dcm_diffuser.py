"""DCM Diffuser: train the STM writer through a frozen Generator, measure on held-out contexts.

  python experiments/dcm_diffuser.py --config=configs/dcm_diffuser.py --workdir=/tmp/dcm_diff
Writes <workdir>/results.json (the yardstick's keys, question EM, question-only baseline, cost).
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from memjax.core import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/dcm_diffuser.py[:tiny]",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "results.json goes here.")


def main(argv):
  del argv
  from memjax.core import yardstick  # pylint: disable=g-import-not-at-top
  from memjax.dcm import diffuser_experiment  # pylint: disable=g-import-not-at-top
  results = cli.run_guarded(diffuser_experiment.run, _CONFIG.value, _WORKDIR.value)
  print(yardstick.format_table(results))
  print("cost:", results["cost"])


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  sys.exit(app.run(main))
