"""The Diffuser experiment end to end on a tiny random decoder; held-out data by construction."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from memjax.core import yardstick
from memjax.dcm import diffuser_experiment as dx

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def tiny_config():
  spec = importlib.util.spec_from_file_location("dcm_diffuser_cfg",
                                                os.path.join(ROOT, "configs", "dcm_diffuser.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config("tiny")


def test_held_out_contexts_never_occur_in_training():
  train, test = dx.split(500, 100, seed=0)
  assert len(train) == 500 and len(test) == 100
  seen = {(e.context, e.question) for e in train}
  assert not any((e.context, e.question) in seen for e in test)
  assert len({(e.context, e.question) for e in test}) > 90     # a varied held-out set


@pytest.mark.slow   # ~60 s; .ci/run runs it after the default suite
def test_tiny_run_writes_the_yardstick_and_the_cost_table(tmp_path):
  r = dx.run(tiny_config(), str(tmp_path), log=lambda *_: None)
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  for k in yardstick.KEYS + ("accuracy_question_only", "question_exact_match"):
    assert k in saved, k
  assert saved["accuracy_oracle"] is not None and saved["accuracy_memory_zeroed"] is not None
  assert saved["cost"]["stm"]["tokens_read"] == 1 + 1 + 2           # [BOS] A_mode + K slots
  assert saved["cost"]["oracle"]["tokens_read"] > saved["cost"]["stm"]["tokens_read"]
  assert r["num_test"] == 8 and r["train_steps"] == 4


def test_a_negative_question_weight_exits_2_with_one_line(tmp_path):
  p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "dcm_diffuser.py"),
                      f"--config={os.path.join(ROOT, 'configs', 'dcm_diffuser.py')}:tiny",
                      f"--workdir={tmp_path}", "--config.targets.question_weight=-1"],
                     capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert p.returncode == 2, p.stderr
  lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith(("I", "W"))]
  assert lines == ["error: targets.question_weight: must be >= 0"], p.stderr
  assert not os.listdir(tmp_path)
