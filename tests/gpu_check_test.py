"""experiments/gpu_check.py end to end on CPU (--smoke: Pallas in interpret mode, tiny sizes).

The default test runs the kernel stages (sweep, bench) and one design job through the child
process; the slow one runs every stage and every job, as the GPU run would.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(out, *args):
  r = subprocess.run([sys.executable, "experiments/gpu_check.py", "--smoke", f"--out={out}", *args],
                     cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(out, "gpu_check.json")) as f:
    res = json.load(f)
  assert os.path.exists(os.path.join(out, "gpu_check.md"))
  for stage in res["stages"]:
    assert "error" not in res[stage], (stage, res[stage])
  return res, r.stdout


def _check_kernel_stages(res):
  best = res["sweep"]["16"]["best"]
  assert best and {"block_q", "block_k", "block_q_bwd", "block_k_bwd"} <= set(best)
  rows = res["bench"]["rows"]
  assert rows and all(r.get("fwd") and r.get("fwd_bwd") for r in rows), rows
  assert res["bench"]["bf16_matmul_tflops"] > 0
  assert next(r for r in rows if r["impl"] == "pallas")["block_sizes"] is not None  # swept ones


@pytest.mark.slow
def test_smoke_kernel_stages_and_one_job(tmp_path):
  res, out = _run(str(tmp_path), "--stages=env,sweep,bench,jobs", "--jobs=then_recall",
                  "--sweep_blocks=16", "--sweep_num_stages=2", "--impls=pallas,reference")
  _check_kernel_stages(res)
  job = res["jobs"]["runs"]["then_recall"]
  assert job["steps"] == 10 and job["wall_s"] > 0 and "accuracy" in job["results"], job
  assert "fastest for head dim 16" in out


@pytest.mark.slow
def test_smoke_every_stage(tmp_path):
  res, _ = _run(str(tmp_path))
  assert res["tests"]["skipped"] == 6 and res["tests"]["failed"] == 0   # no GPU here: all skip
  _check_kernel_stages(res)
  for name, job in res["jobs"]["runs"].items():
    assert job.get("steps") == 10 and "accuracy" in job["results"], (name, job)
  paper = res["paper"]["tries"][0]
  assert paper["steps"] == 10 and not paper.get("timed_out"), paper


@pytest.mark.slow   # ~2.5 min on the 2-core CPU; .ci/run's slow line runs it by name
def test_smoke_bypass_recipe_chains_its_parts_and_resumes(tmp_path):
  """Issue 14's recipe as the bypass stage: lock, then mix warm-started from lock, then mix2
  from mix, each with its yardstick; a second call finds them done and runs nothing again."""
  work = tmp_path / "w"
  res, _ = _run(str(tmp_path / "out"), "--stages=env,bypass", f"--bypass_dir={work}")
  runs = res["bypass"]["runs"]
  assert list(runs) == ["lock", "mix", "mix2"] and not res["bypass"]["skipped"], res["bypass"]
  for part, r in runs.items():
    assert r.get("steps") == 10 and "accuracy_beyond" in r["results"], (part, r)
    assert "loss_lm_heldout_reference" in r["results"], (part, r)
  for part, before in (("mix", "lock"), ("mix2", "mix")):
    with open(work / part / "config.json") as f:
      assert json.load(f)["train"]["init_from"] == str(work / before)
  again, _ = _run(str(tmp_path / "out2"), "--stages=bypass", f"--bypass_dir={work}")
  assert all(r.get("done_earlier") for r in again["bypass"]["runs"].values()), again["bypass"]
