"""Executes notebooks/hrsa_remedies.ipynb on the tiny config (every remedy, a few steps)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from memjax.hrsa.ablation import COLUMNS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# 45-72 s on the 2-core CPU: slow, run by .ci/run's slow line (the default run stays < 10 min).
@pytest.mark.slow
def test_remedies_notebook_runs_and_prints_the_table(monkeypatch):
  monkeypatch.setenv("HRSA_NB_CONFIG", "tiny")
  monkeypatch.setenv("HRSA_NB_STEPS", "10")
  monkeypatch.setenv("MEMJAX_ROOT", ROOT)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "hrsa_remedies.ipynb"), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  rows = {}
  for line in text.splitlines():
    cells = [x.strip() for x in line.strip().strip("|").split("|")]
    if line.startswith("| ") and len(cells) == len(COLUMNS) and cells[0] != "variant":
      rows[cells[0]] = dict(zip(COLUMNS[1:], map(float, cells[1:])))   # "n/a" would fail here
  assert list(rows) == ["none", "bottleneck", "ablate", "attn_sup", "contrastive", "grad_route",
                        "primary"]
  for variant, r in rows.items():
    for k in ("accuracy", "accuracy_memory_zeroed", "accuracy_memory_shuffled",
              "accuracy_no_memory", "accuracy_adversarial"):
      assert 0.0 <= r[k] <= 1.0, (variant, k, r[k])
    assert 0.0 < r["delta_zero"] < 1e6 and -1.0 <= r["memory_cosine"] <= 1.0, (variant, r)
    assert r["seconds"] > 0, (variant, r)
  # the summary line per remedy repeats the table's numbers
  for variant in list(rows)[1:]:
    assert f"{variant:>12}: retrieval EM {rows[variant]['accuracy']:.3f}" in text
