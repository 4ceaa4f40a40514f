"""The budget sweep on a tiny trained workdir: every method at every budget, table and files."""
import json
import os

import pytest

from configs import latentem_kv
from memjax.core import loop
from memjax.latentem import sweep


@pytest.mark.slow   # ~48 s; run by .ci/run's slow line
def test_sweep_runs_every_method_at_every_budget(tmp_path):
  c = latentem_kv.get_config("tiny")
  c.train.update(steps=2, steps_per_call=2, checkpoint_every=2)
  loop.train(c, str(tmp_path), progress=False, evaluate_at_end=False)
  result = sweep.sweep(str(tmp_path), budgets=(48, 56), episodes=4, batch_size=4,
                       log=lambda *_: None)
  want = {f"{m}_{r}" for m in ("discard", "summary", "oracle") for r in ("frozen", "lora")}
  assert want | {"latent_lora"} == set(result["accuracy"])
  assert all(len(v) == 2 and all(0 <= x <= 1 for x in v) for v in result["accuracy"].values())
  table = sweep.format_table(result)
  assert "latent_lora" in table and table.count("\n") == 3
  path, png = sweep.write(result, str(tmp_path))
  assert json.load(open(path))["budgets"] == [48, 56] and os.path.getsize(png) > 0
