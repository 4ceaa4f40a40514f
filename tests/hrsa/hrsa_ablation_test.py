"""The ablation runner's learning-speed measure and table on hand-made histories, and its
common start."""
import jax
import numpy as np

from configs import hrsa_bypass
from memjax.core import checkpointing
from memjax.core import loop
from memjax.hrsa import ablation as hrsa_ablation


def _history(values):
  return [{"step": 10 * (i + 1), "retrieval_em": v} for i, v in enumerate(values)]


def test_steps_to_uses_the_windowed_mean():
  h = _history([0.0, 1.0, 0.0, 1.0, 1.0, 1.0])
  assert hrsa_ablation.steps_to(h, level=0.9, window=1) == 20   # a single noisy row counts
  assert hrsa_ablation.steps_to(h, level=0.9, window=3) == 60   # the mean of three does not
  assert hrsa_ablation.steps_to(h, level=0.5, window=2) == 20


def test_steps_to_none_when_never_reached_or_too_short():
  assert hrsa_ablation.steps_to(_history([0.2] * 20), level=0.9) is None
  assert hrsa_ablation.steps_to(_history([1.0] * 3), level=0.9, window=10) is None


def test_table_has_a_row_per_variant():
  rows = [{"variant": v, "accuracy": 0.5, "seconds": 1.0} for v in hrsa_ablation.VARIANTS]
  table = hrsa_ablation.format_table(rows)
  assert all(f"| {v} | 0.500 |" in table for v in hrsa_ablation.VARIANTS)
  assert "n/a" in table   # columns a row lacks are shown, not dropped


def test_every_variant_starts_at_the_init_from_checkpoint(tmp_path):
  """With train.init_from the variants' common start is the source's parameters (not the fresh
  init) and the step starts at 0; without it the start is the fresh init."""
  source_cfg = hrsa_bypass.get_config("tiny")
  source_cfg.train.seed = 7                       # other params than seed 0's fresh init
  _, system, tx = loop.build(source_cfg)
  source = loop.init_state(source_cfg, system, tx)
  checkpointing.save_config(str(tmp_path), source_cfg)
  mngr = checkpointing.manager(str(tmp_path))
  checkpointing.save(mngr, 40, source, {})
  mngr.wait_until_finished()
  mngr.close()

  c = hrsa_bypass.get_config("tiny")
  fresh = hrsa_ablation.start_state(c, system, tx)
  c.train.init_from = str(tmp_path)
  warm = hrsa_ablation.start_state(c, system, tx)
  src, got, new = (jax.tree.leaves(s.params) for s in (source, warm, fresh))
  assert len(src) == len(got) == len(new)
  for a, b in zip(src, got):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(src, new))   # seed 7 != seed 0
  assert int(warm.step) == 0
