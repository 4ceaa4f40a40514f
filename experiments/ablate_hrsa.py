"""The HRSA remedy ablation from the command line (the notebook's runner, any config).

  python experiments/ablate_hrsa.py --config=configs/hrsa_bypass.py --steps=700 \
      --variants=none,attn_sup --out=/tmp/hrsa_ablation.json

Every variant trains from the same initial parameters on the same batches with one compiled
step (memjax.hrsa.ablation); with `--config.train.init_from=W` that start is W's newest
checkpoint (the remedies in the bypass mix, each from the same `:lock` model:
`--config=configs/hrsa_bypass.py:mix --config.train.init_from=<:lock workdir>`). Prints one
table row per variant as it finishes and the table at the end; --out writes the rows and the
per-step metric histories as JSON.
"""
import json

from absl import flags
from ml_collections import config_flags

from memjax.core import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=False)
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per variant (default: the config's).")
_VARIANTS = flags.DEFINE_list("variants", None, "Variants (default: none and every remedy).")
_OUT = flags.DEFINE_string("out", None, "Write rows and histories here (JSON).")


def main(argv):
  del argv
  from memjax.hrsa import ablation  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  steps = _STEPS.value or config.train.steps
  config.train.steps = steps
  config.train.warmup_steps = min(config.train.warmup_steps, max(steps // 10, 1))
  variants = tuple(_VARIANTS.value) if _VARIANTS.value else ablation.VARIANTS
  rows, histories = ablation.run_ablation(config, variants, steps=steps, log=print)
  print(ablation.format_table(rows))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"rows": rows, "histories": histories}, f)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
