"""Train any memjax system from an ml_collections config; resumes from --workdir.

  python experiments/train.py --config=configs/then_recall.py --workdir=/tmp/then
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from memjax.core import cli
from memjax.core import distributed
from memjax.core import yardstick

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results.json go here.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_INIT_MULTIHOST = cli.define_multihost_flags()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from memjax.core import loop  # pylint: disable=g-import-not-at-top
  _INIT_MULTIHOST()
  results = cli.run_guarded(loop.train, _CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)
  results.pop("state", None)
  if results and distributed.is_main():
    print(yardstick.format_table(results))
    print(f"results: {_WORKDIR.value}/results.json")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  sys.exit(app.run(main))
