"""Notebooks run top to bottom on their tiny configs (MEMJAX_TINY=1)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# hrsa_remedies is executed (and its table checked) by tests/experiments/hrsa_notebook_test.py
# in the default run; here it would run a second time, so only with -m slow. dcm_k_sweep runs
# four tiny experiments (two phase-1a, two Diffuser), minutes on 2 cores: -m slow as well.
SLOW = {"hrsa_remedies.ipynb", "dcm_k_sweep.ipynb"}
NOTEBOOKS = [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f
             for f in sorted(os.listdir(os.path.join(ROOT, "notebooks"))) if f.endswith(".ipynb")]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, monkeypatch):
  monkeypatch.setenv("MEMJAX_TINY", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
