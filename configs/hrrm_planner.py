"""HRRM Planner (HRM core + ControllerHead) on planning traces in the DSL, 2-core CPU.

  python experiments/train.py --config=configs/hrrm_planner.py --workdir=/tmp/hrrm_planner
  python experiments/train.py --config=configs/hrrm_planner.py:50m ...   (the 54.1M model)

`accuracy` is control-token detection: over positions where the next token is a
control token (<PLAN> <SUBGOAL> <ACTION> <CHECK> <ENDPLAN>) or the head says it
is, the share where the head names the right class.
results.json carries the n-gram baselines on the same metric: accuracy_ngram1/2/3, a lookup
table on the last 1/2/3 tokens fit on the training stream. Eval plans are held out (none
occurs in training; their goals and subgoal sizes do).
Measured 2026-12-02, shared 2-core CPU (58.5 s of training, 800 steps, 1 min 29 s for the
whole command), 512 held-out plans: control-token detection accuracy 1.000; n-gram baselines
last token 0.592, last two 0.766, last three 0.874; chance 0.167; perplexity 1.58.
See BUILD_NOTES.md (HRRM section, held-out evaluation).
"""
import ml_collections

from memjax.core import config as cfg
from memjax.hrrm.tasks import PlanTraces
from memjax.hrrm import model as hrrm


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg.variant(arg, ("", "tiny", "50m"))
  c = ml_collections.ConfigDict()
  c.model = hrrm.model_config("planner", "50m" if arg == "50m" else "tiny")
  if arg != "50m":
    c.model.update(d_model=64, num_heads=4, d_ff=128, num_layers=2, max_H=2, inner_T=2)
  c.task = PlanTraces.defaults()
  c.task.update(max_goal=6, max_len=48)
  c.train = cfg.train_defaults()
  c.train.update(steps=800, batch_size=32, lr=3e-3, warmup_steps=50, log_every=50,
                 steps_per_call=10, checkpoint_every=400, eval_batches=8, eval_batch_size=64)
  if arg == "tiny":  # for tests: compiles and runs in seconds
    c.model.update(d_model=32, num_heads=2, d_ff=64, max_H=1, inner_T=1)
    c.model.eval_h_cycles = [1]
    c.task.update(max_goal=3, max_len=24)
    c.train.update(steps=10, batch_size=8, warmup_steps=2, log_every=5, steps_per_call=5,
                   checkpoint_every=10, eval_batches=2, eval_batch_size=8, tensorboard=False)
  return c
