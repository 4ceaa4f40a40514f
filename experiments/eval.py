"""Restore the latest checkpoint in --workdir, run the memory-use yardstick, write results.json.

  python experiments/eval.py --workdir=/tmp/then
"""
import sys

from absl import app, flags, logging

from memjax.core import cli
from memjax.core import distributed
from memjax.core import yardstick

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments/train.py.")
_INIT_MULTIHOST = cli.define_multihost_flags()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from memjax.core import loop  # pylint: disable=g-import-not-at-top
  _INIT_MULTIHOST()
  results = cli.run_guarded(loop.evaluate_workdir, _WORKDIR.value)
  if distributed.is_main():
    print(yardstick.format_table(results))
    print(f"results: {_WORKDIR.value}/results.json")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  sys.exit(app.run(main))
