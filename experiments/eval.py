"""Restore the newest intact checkpoint in --workdir, run the memory-use yardstick, write results.json.

  python experiments/eval.py --workdir=/tmp/then

Under the training rules: refused while a run holds the workdir, refused (one line,
exit 2) for an unwritable workdir before the yardstick runs, and for non-finite
parameters; a damaged newest checkpoint is skipped with a warning.
"""
from absl import flags, logging

from memjax.core import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments/train.py.")
_INIT_MULTIHOST = cli.define_multihost_flags()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from memjax.core import loop  # pylint: disable=g-import-not-at-top
  from memjax.core import distributed  # pylint: disable=g-import-not-at-top
  from memjax.core import yardstick  # pylint: disable=g-import-not-at-top
  _INIT_MULTIHOST()
  results = loop.evaluate_workdir(_WORKDIR.value)
  if distributed.is_main():
    print(yardstick.format_table(results))
    print(f"results: {_WORKDIR.value}/results.json")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
