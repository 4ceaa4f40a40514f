"""HRSA bad input through the train binary: one-line error naming the field, exit code 2."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("override, field", [
    ("--config.model.slots=(4,6,16)", "model.slots"),
    ("--config.task.doc_len=65536", "task.doc_len"),
    ("--config.model.remedies=bottleneck,telepathy", "model.remedies"),
    ("--config.model.enc_shift=0", "model.enc_shift"),
    ("--config.model.attention_backend=cuda", "model.attention_backend"),
])
def test_bad_input_gives_one_line_error_and_exit_2(tmp_path, override, field):
  cmd = [sys.executable, "experiments/train.py", "--config=configs/hrsa_retrieval.py:tiny",
         override, f"--workdir={tmp_path}", "--progress=false"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
  assert p.returncode == 2, p.stderr[-2000:]
  lines = [l for l in p.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and field in lines[0], p.stderr[-2000:]
  assert "Traceback" not in p.stderr
