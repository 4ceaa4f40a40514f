"""Executes notebooks/hrsa_remedies.ipynb on the tiny config (every remedy, a few steps)."""
import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ~45 s alone on the 2-core CPU (one compile serves all seven variants), so in the default run.
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
  for variant in ("none", "bottleneck", "ablate", "attn_sup", "contrastive", "grad_route",
                  "primary"):
    assert f"| {variant} |" in text
