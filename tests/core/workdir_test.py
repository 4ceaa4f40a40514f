"""The workdir: one writer (lock, stale takeover), writable before work, resume hygiene."""
import json
import os
import socket
import subprocess
import sys

import pytest

from configs import then_recall
from memjax.core import config as cfg
from memjax.core import workdir


def test_second_claim_is_refused_naming_the_holder(tmp_path):
  with workdir.claim(str(tmp_path)):
    with pytest.raises(workdir.WorkdirError) as e:
      workdir.claim(str(tmp_path))
    assert f"pid {os.getpid()}" in str(e.value) and socket.gethostname() in str(e.value)
    held = json.loads((tmp_path / "LOCK").read_text())
    assert held["pid"] == os.getpid() and held["start"]
  assert not (tmp_path / "LOCK").exists()      # released: removed
  workdir.claim(str(tmp_path)).release()        # and free again


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  (tmp_path / "LOCK").write_text(json.dumps(dict(host=socket.gethostname(), pid=int(dead),
                                                 start="yesterday", command="train.py")))
  lock = workdir.claim(str(tmp_path))
  err = capsys.readouterr().err
  assert err.startswith("warning:") and f"pid {dead}" in err and "no longer exists" in err
  assert json.loads((tmp_path / "LOCK").read_text())["pid"] == os.getpid()
  lock.release()


def test_not_a_directory_and_not_writable(tmp_path):
  f = tmp_path / "f"
  f.write_text("x")
  with pytest.raises(workdir.WorkdirError, match="is a file, not a directory"):
    workdir.claim(str(f))
  with pytest.raises(workdir.WorkdirError, match="cannot create it"):
    workdir.claim(str(f / "sub"))
  with pytest.raises(workdir.WorkdirError, match="does not exist"):
    workdir.check_writable(str(tmp_path / "absent"), create=False)
  ro = tmp_path / "ro"
  ro.mkdir()
  os.chmod(ro, 0o555)
  try:
    if os.access(ro, os.W_OK):
      pytest.skip("running as root: modes do not stop writes (the replay uses chattr +i)")
    with pytest.raises(workdir.WorkdirError, match="not writable"):
      workdir.claim(str(ro))
  finally:
    os.chmod(ro, 0o755)


def test_truncate_metrics_keeps_rows_up_to_the_resumed_step(tmp_path):
  rows = [{"step": s, "loss": float(s)} for s in (10, 20, 30)]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                          + '{"step": 40, "lo')      # cut by a kill
  assert workdir.truncate_metrics(str(tmp_path), 20) == 2
  kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert kept == rows[:2]


def test_retire_results_names_the_step_it_measured(tmp_path):
  (tmp_path / "results.json").write_text(json.dumps({"accuracy": 0.5, "train_steps": 40}))
  moved = workdir.retire_results(str(tmp_path))
  assert moved == str(tmp_path / "results.step40.json")
  assert not (tmp_path / "results.json").exists()
  assert json.loads((tmp_path / "results.step40.json").read_text())["accuracy"] == 0.5
  assert workdir.retire_results(str(tmp_path)) is None


def test_changed_config_is_refused_then_recorded(tmp_path):
  wd = str(tmp_path)
  c = then_recall.get_config("tiny")
  assert workdir.check_config(wd, c, allow_change=False) == []
  workdir.record_config(wd, c, [], step=0)
  assert workdir.check_config(wd, c, allow_change=False) == []     # same config: resumes
  c2 = then_recall.get_config("tiny")
  c2.train.steps, c2.model.dim = 40, 64
  with pytest.raises(cfg.ConfigError) as e:
    workdir.check_config(wd, c2, allow_change=False)
  assert "model.dim 32 -> 64, train.steps 20 -> 40" in str(e.value)
  changes = workdir.check_config(wd, c2, allow_change=True)
  workdir.record_config(wd, c2, changes, step=20)
  row = json.loads((tmp_path / "config.history.jsonl").read_text())
  assert row["step"] == 20 and row["changes"] == {"model.dim": [32, 64], "train.steps": [20, 40]}
  assert row["previous"]["train"]["steps"] == 20
  assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 40
