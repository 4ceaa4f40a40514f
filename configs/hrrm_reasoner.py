"""HRRM Reasoner (HRM core, thought spans <SoT> ... <EoT>) on arithmetic word problems, 2-core CPU.

  python experiments/train.py --config=configs/hrrm_reasoner.py --workdir=/tmp/hrrm_reasoner
  python experiments/train.py --config=configs/hrrm_reasoner.py:50m ...  (the 54.1M model)

Trained on the scratchpad and the answer (teacher forced); `accuracy_generate`
decodes the thought span and the answer greedily from the question alone;
`accuracy_self_consistency_k5` votes over 5 sampled thought spans.
Eval problems are held out: their operand combinations (start, b1, b2) never occur in
training (memjax.data.heldout; a quarter of the 1620 combinations).
Measured 2026-12-02, shared 2-core CPU (132 s of training, 1500 steps, 3 min 27 s for the whole
command), 256 held-out problems: greedy generation accuracy 0.863, self-consistency (k=5) 0.836,
teacher-forced answer token 1.000 (chance 0.026). (2026-11-23, eval problems all seen in
training: 0.996 / 0.992.) See BUILD_NOTES.md (HRRM section, held-out evaluation).
"""
import ml_collections

from memjax.core import config as cfg
from memjax.hrrm.tasks import ArithmeticScratchpad
from memjax.hrrm import model as hrrm


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg.variant(arg, ("", "tiny", "50m"))
  c = ml_collections.ConfigDict()
  c.model = hrrm.model_config("reasoner", "50m" if arg == "50m" else "tiny")
  if arg != "50m":
    c.model.update(d_model=96, num_heads=4, d_ff=256, num_layers=2, max_H=2, inner_T=2)
  c.model.gen_steps = 16
  c.model.sc_temperature = 0.7
  c.model.eval_h_cycles = [1, 2]
  c.task = ArithmeticScratchpad.defaults()
  c.task.update(max_start=20, max_operand=9, num_ops=2, max_len=48)
  c.train = cfg.train_defaults()
  c.train.update(steps=1500, batch_size=32, lr=3e-3, warmup_steps=100, log_every=50,
                 steps_per_call=10, checkpoint_every=500, eval_batches=4, eval_batch_size=64)
  if arg == "tiny":  # for tests: compiles and runs in seconds
    c.model.update(d_model=32, num_heads=2, d_ff=64, max_H=1, inner_T=1, gen_steps=4,
                   self_consistency_k=2)
    c.model.eval_h_cycles = [1]
    c.task.update(max_start=5, max_operand=3, num_ops=1, max_len=32)
    c.train.update(steps=10, batch_size=8, warmup_steps=2, log_every=5, steps_per_call=5,
                   checkpoint_every=10, eval_batches=1, eval_batch_size=4, tensorboard=False)
  return c
