"""memjax: memory-augmented transformers in JAX/Flax, each memory shown to be used."""
import importlib.util
import pathlib
import sys

__version__ = "0.1.0"

# The Pallas kernels live in the top-level kernels/ folder and install as memjax.kernels
# (setup.py package_dir). From a plain checkout (no install, repo root on sys.path) the
# same name resolves to that folder, so `import memjax.kernels` works both ways.
_KERNELS = pathlib.Path(__file__).resolve().parent.parent / "kernels"


class _KernelsFinder:

  @staticmethod
  def find_spec(name, path=None, target=None):
    del path, target
    if name != "memjax.kernels" or not (_KERNELS / "__init__.py").is_file():
      return None
    return importlib.util.spec_from_file_location(
        name, _KERNELS / "__init__.py", submodule_search_locations=[str(_KERNELS)])


if not any(isinstance(f, _KernelsFinder) for f in sys.meta_path):
  sys.meta_path.append(_KernelsFinder())   # after the installed finders: an install wins
