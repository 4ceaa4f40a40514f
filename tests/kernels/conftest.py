"""Make `memjax.kernels` importable from a plain checkout.

setup.py maps the package `memjax.kernels` to the folder kernels/ (package_dir);
`pip install -e .` honours that (setuptools' editable finder). Without an
install, run from the repo root, this registers kernels/ as memjax.kernels.
"""
import importlib.util
import pathlib
import sys

_ROOT = pathlib.Path(__file__).resolve().parents[2]

try:
  import memjax  # noqa: F401
except ModuleNotFoundError:
  sys.path.insert(0, str(_ROOT))
  import memjax  # noqa: F401

try:
  import memjax.kernels  # noqa: F401
except ModuleNotFoundError:
  _spec = importlib.util.spec_from_file_location(
      "memjax.kernels", _ROOT / "kernels" / "__init__.py",
      submodule_search_locations=[str(_ROOT / "kernels")])
  _module = importlib.util.module_from_spec(_spec)
  sys.modules["memjax.kernels"] = _module
  _spec.loader.exec_module(_module)
  memjax.kernels = _module
