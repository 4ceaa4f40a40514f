"""HRM recurrence on pointer chasing (roots of a forest of chains), on a 2-core CPU.

  python experiments/train.py --config=configs/hrm_reasoning.py --workdir=/tmp/hrm_reasoning

Position i holds parent(i); the target is the root of i: a chain of depth d needs
d hops (log2 d with pointer doubling), so a fixed compute per cycle cannot
shortcut it. results.json carries accuracy_by_h_cycles (H -> exact accuracy of
whole examples) from System.extra_results.
Measured 2026-11-23, shared 2-core CPU (446 s of training, 2000 steps): exact-example
accuracy by test-time H cycles 1: 0.262, 2: 0.767, 3: 0.838, 4 (trained): 0.842, 6: 0.816,
8: 0.793 (token accuracy 0.823 at H=1, 0.976 at H=4). See BUILD_NOTES.md (HRRM section).
"""
import ml_collections

from memjax.core import config as cfg
from memjax.hrrm.tasks import PointerRoots
from memjax.hrrm import model as hrrm


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg.variant(arg, ("", "tiny"))
  c = ml_collections.ConfigDict()
  c.model = hrrm.model_config("hrm", "tiny")
  c.model.update(d_model=64, num_heads=4, d_ff=128, num_layers=2, max_H=4, inner_T=2,
                 segments=2, causal=False, learned_pos=True, max_seq_len=16)
  c.model.eval_h_cycles = [1, 2, 3, 4, 6, 8]
  c.task = PointerRoots.defaults()
  c.task.update(num_nodes=12, min_chains=1, max_chains=3)
  c.train = cfg.train_defaults()
  c.train.update(steps=2000, batch_size=64, lr=2e-3, warmup_steps=100, log_every=50,
                 steps_per_call=10, checkpoint_every=1000, eval_batches=8, eval_batch_size=128)
  if arg == "tiny":  # for tests: compiles and runs in seconds
    c.model.update(d_model=32, num_heads=2, d_ff=64, max_H=2, inner_T=1)
    c.model.eval_h_cycles = [1, 2]
    c.task.update(num_nodes=6)
    c.model.max_seq_len = 6
    c.train.update(steps=10, batch_size=8, warmup_steps=2, log_every=5, steps_per_call=5,
                   checkpoint_every=10, eval_batches=2, eval_batch_size=8, tensorboard=False)
  return c
