"""Bad input: one clear line naming the field, a non-zero exit, before anything compiles."""
import os
import subprocess
import sys

import pytest

from configs import then_recall
from memjax.core import config as cfg
from memjax.core import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("section, field, value, message", [
    ("task", "name", "sudoku9", "task.name: unknown task 'sudoku9'"),
    ("model", "name", "gpt5", "model.name: unknown model 'gpt5'"),
    ("model", "dim", 0, "model.dim: must be positive"),
    ("task", "segment_len", -8, "task.segment_len: must be positive"),
    ("train", "batch_size", 0, "train.batch_size: must be positive"),
    ("model", "segment_len", 5, "model.segment_len: 5 does not divide the sequence length 24"),
    ("model", "write", "some", "model.write: unknown value 'some'"),
    ("train", "steps_per_call", 3, "train.steps_per_call: 3 does not divide train.steps=20"),
])
def test_validate_names_the_field(section, field, value, message):
  c = then_recall.get_config("tiny")
  c[section][field] = value
  with pytest.raises(cfg.ConfigError) as e:
    loop.validate(c)
  assert str(e.value).startswith(message)


def _run(*args):
  # PYTHONPATH: the binaries import memjax from this checkout, not from an installed copy.
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=300, env=env)


def test_train_binary_bad_config_exits_2_with_one_line(tmp_path):
  p = _run("experiments/train.py", "--config=configs/then_recall.py:tiny",
           "--config.task.name=nope", f"--workdir={tmp_path}", "--noprogress")
  assert p.returncode == 2
  assert p.stderr.strip().splitlines()[-1].startswith("error: task.name: unknown task 'nope'")
  assert len(p.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "checkpoints")     # failed before touching anything


def test_eval_binary_missing_and_corrupt_checkpoints(tmp_path):
  p = _run("experiments/eval.py", f"--workdir={tmp_path / 'nothing'}")
  assert p.returncode == 2 and p.stderr.strip().startswith("error:")
  assert "config.json" in p.stderr
  # A workdir whose only checkpoint is damaged: named in one line, files left as they were.
  wd = tmp_path / "damaged"
  c = then_recall.get_config("tiny")
  c.train.update(steps=5, steps_per_call=5, checkpoint_every=5)
  loop.train(c, str(wd), progress=False, evaluate_at_end=False)
  state_dir = wd / "checkpoints" / "5" / "state"
  for root, _, files in os.walk(state_dir):
    for f in files:
      if not f.startswith("_"):
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(3)
  before = sorted(os.listdir(wd / "checkpoints"))
  p = _run("experiments/eval.py", f"--workdir={wd}")
  assert p.returncode == 2, p.stderr[-500:]
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1, p.stderr[-2000:]          # one clean line, no orbax fragment after it
  assert lines[0].startswith("error:") and "checkpoints/5" in lines[0] and "unreadable" in lines[0]
  assert sorted(os.listdir(wd / "checkpoints")) == before
