"""THEN live memory on multi-segment associative recall, on a 2-core CPU.

  python experiments/train.py --config=configs/then_recall.py --workdir=/tmp/then

16 key-value pairs in segment 0 (16 of 256 keys, 64 values), a filler segment, 16 queries in
segment 2: the model sees one 32-token segment at a time, so every answer comes from the traces.
Measured 2026-12-03, fresh clone, quiet 2-core CPU: accuracy 1.0000; memory zeroed 0.0132 /
shuffled 0.0200 / no memory 0.0132 (chance 0.0156); 600 steps in 17.8 s of training, 46 s for the
whole command with `pip install -e .` (2026-12-02, before issue 16's step changes: 53.6 s).
2026-12-05, fresh clone, a faster 2-core CPU, after issue 16's last step changes (6.3 ms a
step): accuracy 0.9999; zeroed 0.0125 / shuffled 0.0186 / no memory 0.0125; 11.5 s of
training, 45 s in all with the install.

256 keys, not 64: evaluation asks only for held-out bindings (16 values per key), so a shuffled
memory that binds the asked key answers right 1 time in 16, not 64; with 16 of 64 keys a quarter
of the questions met such a memory (shuffled 0.025), with 16 of 256 one in sixteen (baseline
0.018, BUILD_NOTES.md).
"""
import ml_collections

from memjax.core import config as cfg
from memjax.data.recall import AssocRecall
from memjax.then import model as then


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg.variant(arg, ("", "tiny"))
  c = ml_collections.ConfigDict()
  c.model = then.defaults()
  # One layer, one head: the lookup (query key -> trace written after that key) is a single
  # induction step given the token shift; more heads split the match and learn slower.
  c.model.update(dim=64, layers=1, heads=1, kv_heads=1)
  c.task = AssocRecall.defaults()
  c.task.update(num_keys=256)
  c.train = cfg.train_defaults()
  c.train.update(steps=600, batch_size=32, lr=1e-2, warmup_steps=100, log_every=50,
                 steps_per_call=10, checkpoint_every=200, eval_batches=8, eval_batch_size=64)
  if arg == "tiny":  # for tests: compiles and runs in seconds
    c.model.update(dim=32, layers=1, heads=2, kv_heads=2, capacity=16)
    c.task.update(segment_len=8, num_pairs=4, num_queries=4, num_keys=8, num_values=8, num_filler=8)
    c.train.update(steps=20, batch_size=8, warmup_steps=2, log_every=10, steps_per_call=5,
                   checkpoint_every=10, eval_batches=2, eval_batch_size=8, tensorboard=False)
  return c
