"""Exports a trained HRRM model to a Hugging Face style folder and checks the reload.

  python experiments/export_hrrm.py --workdir=/tmp/hrrm_planner --tokenizer=artifacts/hrrm/tokenizer.json \
      --out=artifacts/hrrm/planner
  python experiments/export_hrrm.py --workdir=/tmp/hrrm_planner --tokenizer=task --out=...
  python experiments/export_hrrm.py --check=artifacts/hrrm/planner      # reload only

The folder holds config.json, model.safetensors, tokenizer.json; memjax reloads
it bit-exactly (memjax.hrrm.export.load), which this binary verifies.
"""
import os

from absl import flags, logging

from memjax.core import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (latest checkpoint).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "artifacts/hrrm/tokenizer.json",
                                 "tokenizer.json, or 'task': a word-level tokenizer of the "
                                 "trained task's vocabulary (Planner / Reasoner tasks).")
_OUT = flags.DEFINE_string("out", None, "The export folder.")
_CHECK = flags.DEFINE_string("check", None, "Only reload this export folder and report.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  import jax
  import numpy as np
  from memjax.core import checkpointing
  from memjax.core import config as cfg
  from memjax.core import loop
  from memjax.core import workdir as wd_lib
  from memjax.hrrm import tokenizer as hrrm_tokenizer
  from memjax.hrrm import export as hrrm_export
  cli.also_user_errors(hrrm_export.ExportError, hrrm_tokenizer.TokenizerError)
  if _CHECK.value:
    m, params = hrrm_export.load(_CHECK.value)
    n = sum(x.size for x in jax.tree.leaves(params))
    print(f"{_CHECK.value}: {m.name}, {n:,} parameters, reload ok")
    return 0
  if not _WORKDIR.value or not _OUT.value:
    raise cfg.ConfigError("--workdir and --out: both required (or --check=FOLDER)")
  config = checkpointing.load_config(_WORKDIR.value)
  loop.validate(config)
  task, system, tx = loop.build(config)
  wd_lib.check_writable(_OUT.value)   # before the restore: the export must be able to land
  # Read under the training rules: not while a run writes the workdir.
  with wd_lib.claim(_WORKDIR.value, create=False):
    tokenizer = _TOKENIZER.value
    if tokenizer == "task":
      if not hasattr(task, "words"):
        raise cfg.ConfigError(f"--tokenizer=task: task {config.task.name!r} has no word vocabulary")
      tokenizer = os.path.join(_OUT.value, "tokenizer.json")
      hrrm_tokenizer.word_level(task.words).save(tokenizer)
    hrrm_tokenizer.load(tokenizer)
    abstract = jax.eval_shape(lambda: loop.init_state(config, system, tx))
    mngr = checkpointing.manager(_WORKDIR.value, read_only=True)
    try:
      state, _ = checkpointing.restore(mngr, abstract)
    finally:
      mngr.close()
  bad, total = checkpointing.params_finite(state.params)
  if bad:
    raise checkpointing.CheckpointError(
        f"{_WORKDIR.value} step {int(state.step)}: {bad:,} of {total:,} parameter values are "
        f"not finite (NaN or inf); refusing to export")
  hrrm_export.save(_OUT.value, config.model, state.params, tokenizer,
                   vocab_size=task.vocab_size)
  _, back = hrrm_export.load(_OUT.value)
  same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(back)))
  if not same:
    raise RuntimeError("reloaded parameters differ from the checkpoint")   # a bug: traceback
  print(f"exported {config.model.name} (step {int(state.step)}) to {_OUT.value}; "
        f"reload bit-exact")
  return 0


if __name__ == "__main__":
  cli.run(main)
