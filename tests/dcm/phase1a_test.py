"""experiments/phase1a.py end to end on a tiny decoder saved as a Hugging Face folder."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from memjax.core import config as cfg
from memjax.dcm import report as phase1a_report
from memjax.dcm import phase1a
from memjax import pretrained
from memjax.pretrained import hf

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
YARDSTICK_KEYS = ("accuracy", "accuracy_memory_zeroed", "accuracy_memory_shuffled",
                  "accuracy_no_memory", "accuracy_oracle", "chance", "delta_zero",
                  "memory_cosine")


def tiny_config():
  spec = importlib.util.spec_from_file_location(
      "phase1a_tiny_cfg", os.path.join(ROOT, "configs", "phase1a_tiny.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.train.steps, c.stm.num_slots, c.num_restarts = 3, 2, 1
  return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """One run on a tiny Qwen2 written to disk as a HF folder (what a user's checkpoint is)."""
  folder = str(tmp_path_factory.mktemp("tiny_qwen2_hf"))
  t = pretrained.make_tiny("qwen2", 0)
  hf.save_folder(t.model, t.tokenizer, folder)
  c = tiny_config()
  c.model = folder
  c.data.num_examples = 5          # 2 batches of 4, the last one padded
  workdir = str(tmp_path_factory.mktemp("p1a"))
  results = phase1a.run(c, workdir, log=lambda *_: None)
  return workdir, results, c


def test_results_json_and_files(run_dir):
  workdir, results, c = run_dir
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  for k in ("convergence_rate", "stage1_question_convergence_rate",
            "stage1_answer_convergence_rate", "stage1_question_ratio_random",
            "stage1_answer_ratio_context", "stage2_ratio_random", "stage2_ratio_context",
            "stage2_question_ratio_stage1", "stage2_answer_ratio_stage1", "question_exact_match",
            "answer_exact_match", "converged_both_exact_match",
            *YARDSTICK_KEYS):
    assert k in saved, k
  assert 0.0 <= saved["convergence_rate"] <= 1.0
  assert saved["chance"] == pytest.approx(1 / 8)
  assert saved["num_examples"] == 5 and saved["config"]["model"] == c.model
  assert saved["compiles"]["round"] == 1          # both stages, every restart, both batches
  examples = sorted(os.listdir(os.path.join(workdir, "examples")))
  assert len(examples) == 5
  with open(os.path.join(workdir, "examples", examples[0])) as f:
    ex = json.load(f)
  assert {"stage1", "stage2", "stage3", "random_ce", "context_ce"} <= set(ex)
  arrays = np.load(os.path.join(workdir, "content.npz"))
  assert arrays["stage2_content_NxKxD"].shape == (5, 2, 64)
  assert arrays["stage1_content_NxCxKxD"].shape == (5, 2, 2, 64)
  curves = np.load(os.path.join(workdir, "curves.npz"))
  assert curves["stage2_ce"].shape[1:] == (3, 5, 2)          # rounds x steps x N x S


def test_stage2_content_reproduces_its_reported_loss(run_dir):
  """The saved content, read back through the Generator, gives the CE results.json reports."""
  workdir, _, c = run_dir
  loaded = phase1a.load_generator(c.model)
  r = phase1a.Phase1a(loaded.model, loaded.tokenizer, c)
  from memjax.data import qa
  enc = phase1a.encode(qa.synthetic_qa(5, c.data.seed), loaded.tokenizer, c)
  content = np.load(os.path.join(workdir, "content.npz"))["stage2_content_NxKxD"]
  rows = np.arange(4)
  prompts = r.stm_prompts(content[rows])
  ce = r.ce(prompts, prompts.shape[2], enc.targets_NxSxT[rows], enc.mask_NxSxT[rows])
  for i in rows:
    with open(os.path.join(workdir, "examples", f"synthetic-0-{i}.json")) as f:
      np.testing.assert_allclose(ce[i], json.load(f)["stage2"]["ce"], rtol=1e-5, atol=1e-5)


def test_analyze_prints_and_plots(run_dir, tmp_path):
  workdir, results, _ = run_dir
  run = phase1a_report.load(workdir)
  text = phase1a_report.summary(run)
  assert "convergence_rate" in text and "decoded samples" in text
  a = phase1a_report.plot_loss_curves(run, str(tmp_path / "loss.png"))
  b = phase1a_report.plot_convergence_by_k([run, run], str(tmp_path / "byk.png"))
  for p in (a, b):
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_validate_names_the_field():
  c = tiny_config()
  phase1a.validate(c)
  for field, value, msg in (("stm.num_slots", 0, "stm.num_slots: must be positive"),
                            ("optim.schedule", "linear", "optim.schedule: unknown value"),
                            ("train.batch_size", 6, "train.batch_size: 6 is not a multiple"),
                            ("train.data_parallel", 64, "train.data_parallel: 64 devices asked"),
                            ("oracle.answer_template", "{context} {answer}", "oracle.answer"),
                            ("model", "/no/such/folder", "model: no such")):
    bad = tiny_config()
    node = bad
    *path, last = field.split(".")
    for p in path:
      node = node[p]
    node[last] = value
    if field == "train.batch_size":
      bad.train.data_parallel = 4
    with pytest.raises(cfg.ConfigError, match="^" + msg.replace("{", r"\{").replace("}", r"\}")):
      phase1a.validate(bad)


@pytest.mark.parametrize("override,field", [("--config.stm.num_slots=0", "stm.num_slots"),
                                            ("--config.model=/no/such/model", "model")])
def test_bad_config_exits_2_with_one_line(tmp_path, override, field):
  p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "phase1a.py"),
                      f"--config={os.path.join(ROOT, 'configs', 'phase1a_tiny.py')}",
                      f"--workdir={tmp_path}", override], capture_output=True, text=True,
                     timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert p.returncode == 2, p.stderr
  lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith(("I", "W"))]
  assert len(lines) == 1 and lines[0].startswith(f"error: {field}:"), p.stderr
