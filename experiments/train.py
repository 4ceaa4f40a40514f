"""Train any memjax system from an ml_collections config; resumes from --workdir.

  python experiments/train.py --config=configs/then_recall.py --workdir=/tmp/then
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from memjax import cli, distributed
from memjax.eval import yardstick

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results.json go here.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from memjax.training import loop  # pylint: disable=g-import-not-at-top
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  results = cli.run_guarded(loop.train, _CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)
  results.pop("state", None)
  if results:
    print(yardstick.format_table(results))
    print(f"results: {_WORKDIR.value}/results.json")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  sys.exit(app.run(main))
