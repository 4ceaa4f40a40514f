"""Train any memjax system from an ml_collections config; resumes from --workdir.

  python experiments/train.py --config=configs/then_recall.py --workdir=/tmp/then

Re-running the same command resumes from the newest intact checkpoint. A changed
config (e.g. --config.train.steps=80 to extend a 40-step run) is refused with the
differing keys unless --allow_config_change; then the previous config goes to
config.history.jsonl. Bad input: one line on stderr, exit status 2.
"""
from absl import flags, logging
from ml_collections import config_flags

from memjax.core import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results.json go here.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume even though the config differs from the workdir's config.json (the previous "
    "config and the changes are kept in config.history.jsonl).")
_INIT_MULTIHOST = cli.define_multihost_flags()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from memjax.core import loop  # pylint: disable=g-import-not-at-top
  from memjax.core import distributed  # pylint: disable=g-import-not-at-top
  from memjax.core import yardstick  # pylint: disable=g-import-not-at-top
  _INIT_MULTIHOST()
  results = loop.train(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value,
                       allow_config_change=_ALLOW_CHANGE.value)
  results.pop("state", None)
  if results and distributed.is_main():   # written (atomically) before anything is printed
    print(yardstick.format_table(results))
    print(f"results: {_WORKDIR.value}/results.json")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
