"""Dynamic Context Memory phase 1a: optimize STM contents so a frozen LLM emits Q and A.

  python experiments/phase1a.py --config=configs/phase1a.py --workdir=/tmp/p1a
  python experiments/phase1a.py --config=configs/phase1a.py --workdir=/tmp/p1a_qwen \
      --config.model=/path/to/Qwen2.5-0.5B-Instruct
Multi-host: the same command on every host with --coordinator_address=host0:port
--num_processes=N --process_id=i (and --config.train.data_parallel = the global device count).
Writes <workdir>/results.json, examples/*.json, content.npz, curves.npz.
"""
from absl import flags
from ml_collections import config_flags

from memjax.core import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/phase1a*.py[:arg]).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "results.json and the optimized contents go here.")
_INIT_MULTIHOST = cli.define_multihost_flags()


def main(argv):
  del argv
  _INIT_MULTIHOST()
  from memjax.core import workdir  # pylint: disable=g-import-not-at-top
  # Before any work: an unusable or busy workdir is one line and exit 2, not a lost run.
  workdir.claim_primary(_WORKDIR.value)   # held until the process exits
  from memjax.core import yardstick  # pylint: disable=g-import-not-at-top
  from memjax.dcm import phase1a  # pylint: disable=g-import-not-at-top
  examples, loaded = phase1a.prepare(_CONFIG.value)
  results = phase1a.run(_CONFIG.value, _WORKDIR.value, examples=examples, loaded=loaded)
  print(yardstick.format_table(results))
  print(f"convergence_rate {results['convergence_rate']:.3f}; results: "
        f"{_WORKDIR.value}/results.json")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
