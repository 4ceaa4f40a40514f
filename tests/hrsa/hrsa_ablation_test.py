"""The ablation runner's learning-speed measure and table on hand-made histories."""
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
