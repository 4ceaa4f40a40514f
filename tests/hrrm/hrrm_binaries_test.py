"""HRRM binaries: one-line errors and exit code 2 on bad input; a tiny end-to-end run (slow)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, timeout=300):
  # the checkout under test first: an installed (editable) memjax may be another checkout
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_export_check_of_incomplete_folder_fails_in_one_line(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  r = _run("experiments/export_hrrm.py", f"--check={tmp_path}")
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "incomplete export, missing model.safetensors, tokenizer.json" \
      in lines[0], r.stderr


def test_bad_head_count_fails_in_one_line(tmp_path):
  r = _run("experiments/train.py", "--config=configs/hrrm_planner.py:tiny",
           "--config.model.num_heads=3", f"--workdir={tmp_path}")
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith(
      "error: model.num_heads: d_model=32 is not divisible by num_heads=3"), r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("config", ["hrm_reasoning", "titans_recall", "hrrm_planner",
                                    "hrrm_reasoner"])
def test_tiny_train_eval_export(tmp_path, config):
  wd = tmp_path / "wd"
  r = _run("experiments/train.py", f"--config=configs/{config}.py:tiny", f"--workdir={wd}",
           "--progress=false", timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  res = json.loads((wd / "results.json").read_text())
  assert res["train_steps"] == 10 and 0.0 <= res["accuracy"] <= 1.0
  if config != "titans_recall":
    # one figure per H the tiny config lists, each an accuracy
    want = {"hrm_reasoning": {"1", "2"}}.get(config, {"1"})
    assert set(res["accuracy_by_h_cycles"]) == want
    assert all(0.0 <= v <= 1.0 for v in res["accuracy_by_h_cycles"].values())
  else:
    assert 0.0 <= res["accuracy_memory_zeroed"] <= 1.0 and res["delta_zero"] > 0
  if config == "hrrm_planner":   # the n-gram baselines beside chance
    assert all(0.0 < res[f"accuracy_ngram{n}"] <= 1.0 for n in (1, 2, 3))
  if config == "hrrm_reasoner":  # every eval problem decoded (1 batch of 4)
    assert res["generate_examples"] == 4 and 0.0 <= res["accuracy_generate"] <= 1.0
  tok = tmp_path / "tok.json"
  assert _run("experiments/build_tokenizer.py", f"--out={tok}", "--synthetic=50",
              f"--corpus={ROOT}/setup.py").returncode == 0
  r = _run("experiments/export_hrrm.py", f"--workdir={wd}", f"--tokenizer={tok}",
           f"--out={tmp_path / 'export'}")
  assert r.returncode == 0 and "reload bit-exact" in r.stdout, r.stderr[-2000:]
